"""Guidance by name for sampling and evaluation (``sample.py`` / ``evaluate.py --guidance``):
which transform of :mod:`diffusion_jax.guidance` wraps a run's denoiser, with what options, and
the guide it needs (a weaker run for autoguidance, a trained classifier for classifier guidance).
"""

from __future__ import annotations

import dataclasses
import math

from diffusion_jax import guidance

__all__ = ["GUIDANCE", "Guidance", "load_guide", "define_flags", "from_flags"]

# name -> (needs class labels, needs a guide run)
GUIDANCE = {
    "cfg": (True, False),
    "rescaled_cfg": (True, False),
    "apg": (True, False),
    "cfgpp": (True, False),
    "autoguidance": (False, True),
    "classifier": (True, True),
}


@dataclasses.dataclass(frozen=True)
class Guidance:
    """What to guide with: ``name`` in :data:`GUIDANCE` (``None``: no guidance transform, only
    ``dynamic_threshold`` if set), its ``scale`` (1 = the plain conditional model), the noise
    interval ``(sigma_lo, sigma_hi]`` it acts on (``None``: every level), Lin et al.'s ``phi``, APG's
    ``eta`` and ``norm_threshold``, and Imagen's ``dynamic_threshold`` percentile (``None``: off).
    """

    name: str | None = "cfg"
    scale: float = 1.0
    interval: tuple | None = None
    phi: float = 0.7
    eta: float = 0.0
    norm_threshold: float = math.inf
    dynamic_threshold: float | None = None

    def check(self, *, conditional, sampler):
        """One-line ``ValueError`` for a name, an unconditional model or a sampler that does not
        fit."""
        if self.name is not None and self.name not in GUIDANCE:
            raise ValueError(f"unknown guidance {self.name!r}; choose from {sorted(GUIDANCE)}")
        if self.name is not None and GUIDANCE[self.name][0] and not conditional:
            raise ValueError(f"guidance {self.name!r} needs class labels but the model is not "
                             "class-conditional (spec data.num_classes is 0)")
        if self.name == "cfgpp" and sampler != "euler":
            raise ValueError("CFG++ is its own DDIM (Euler) sampler (Chung et al. 2024, Alg. 1): "
                             f"pass --sampler euler, not {sampler!r}")
        if self.interval is not None and self.name is None:
            raise ValueError("a guidance interval needs a guidance method (--guidance)")

    def apply(self, denoiser, guide, null_cond):
        """The guided denoiser (a pytree transform of ``denoiser``)."""
        guided = denoiser
        if self.name in ("cfg", "cfgpp"):
            guided = guidance.classifier_free(denoiser, self.scale, null_cond)
        elif self.name == "rescaled_cfg":
            guided = guidance.rescaled_classifier_free(denoiser, self.scale, self.phi, null_cond)
        elif self.name == "apg":
            guided = guidance.adaptive_projected(denoiser, self.scale, eta=self.eta,
                                                 norm_threshold=self.norm_threshold,
                                                 null_cond=null_cond)
        elif self.name == "autoguidance":
            guided = guidance.autoguidance(denoiser, guide, self.scale)
        elif self.name == "classifier":
            guided = guidance.classifier_guidance(denoiser, guide, self.scale)
        if self.interval is not None and self.name != "cfgpp":
            guided = guidance.guidance_interval(guided, *self.interval, plain=denoiser)
        if self.dynamic_threshold is not None:
            guided = guidance.dynamic_threshold(guided, self.dynamic_threshold)
        return guided

    def sample(self, sampler_fn, denoiser, guide, noise, sigmas, *, key, cond, null_cond,
               options):
        """Run ``sampler_fn`` on the guided denoiser (CFG++ runs its own sampler)."""
        guided = self.apply(denoiser, guide, null_cond)
        if self.name == "cfgpp":
            return guidance.cfg_pp_euler(guided, noise, sigmas, cond=cond)
        return sampler_fn(guided, noise, sigmas, key=key, cond=cond, **options)


def load_guide(name, guide_workdir, *, step=None, ema="config"):
    """The guide of ``name``: the weaker run's denoiser (autoguidance) or the classifier
    (classifier guidance) from ``guide_workdir``; ``None`` for the others."""
    if name not in GUIDANCE or not GUIDANCE[name][1]:
        return None
    if not guide_workdir:
        raise ValueError(f"guidance {name!r} needs --guide_workdir (a weaker run for "
                         "autoguidance, a classifier run for classifier guidance)")
    if name == "classifier":
        from diffusion_jax.recipes.classifier import load_classifier

        return load_classifier(guide_workdir, step=step)[0]
    from diffusion_jax.recipes.loading import load

    return load(guide_workdir, step=step, ema=ema).denoiser


def define_flags(flags):
    """The guidance flags shared by ``sample.py`` and ``evaluate.py``."""
    flags.DEFINE_enum("guidance", None, sorted(GUIDANCE), "Guidance method (default: CFG when "
                      "--guidance_scale is given).")
    flags.DEFINE_list("guidance_interval", None, "sigma_lo,sigma_hi: guide only there.")
    flags.DEFINE_string("guide_workdir", None, "Guide run: a weaker model (autoguidance; default "
                        "--workdir with --guide_step) or a classifier run.")
    flags.DEFINE_integer("guide_step", None, "Checkpoint step of the guide run.")
    flags.DEFINE_float("rescale_phi", 0.7, "Rescaled CFG's phi (Lin et al. 2024).")
    flags.DEFINE_float("apg_eta", 0.0, "APG's weight of the parallel component.")
    flags.DEFINE_float("apg_norm_threshold", math.inf, "APG's norm threshold r.")
    flags.DEFINE_float("dynamic_threshold", None, "Imagen's dynamic-threshold percentile.")


def from_flags(values, guidance_scale, workdir):
    """``(Guidance or None, guide)`` from the parsed flags of :func:`define_flags` (``values`` is
    absl's ``FLAGS``); ``None`` when no guidance flag is set (the config's CFG applies)."""
    name = values.guidance
    if name is None and values.guidance_interval is None and values.dynamic_threshold is None:
        return None, None
    if name is None and guidance_scale is not None:
        name = "cfg"
    interval = None
    if values.guidance_interval is not None:
        if len(values.guidance_interval) != 2:
            raise ValueError(f"--guidance_interval must be sigma_lo,sigma_hi; got "
                             f"{values.guidance_interval}")
        interval = tuple(float(v) for v in values.guidance_interval)
    spec = Guidance(name=name, scale=1.0 if guidance_scale is None else guidance_scale,
                    interval=interval, phi=values.rescale_phi, eta=values.apg_eta,
                    norm_threshold=values.apg_norm_threshold,
                    dynamic_threshold=values.dynamic_threshold)
    guide_workdir = values.guide_workdir
    if name == "autoguidance" and guide_workdir is None and values.guide_step is not None:
        guide_workdir = workdir
    return spec, load_guide(name, guide_workdir, step=values.guide_step)
