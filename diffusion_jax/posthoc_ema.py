"""Post-hoc EMA (Karras et al. 2024, "Analyzing and improving the training dynamics of diffusion
models", EDM2, Sec. 3.1 and App. C): keep power-function EMA snapshots of a few widths during
training, and after training build the EMA of any other width as the least-squares combination
of the snapshots.

The power-function EMA with exponent ``gamma`` averages the training trajectory with the profile
``p(tau) = (gamma + 1) tau^gamma / t^(gamma + 1)`` on ``0 <= tau <= t`` (EDM2 eq. 2; its update
``beta_t = (1 - 1/t)^(gamma + 1)`` is :func:`diffusion_jax.training.ema_power`); its relative
width is ``sigma_rel = sqrt(gamma + 1) / ((gamma + 2) sqrt(gamma + 3))`` (eq. 3). Snapshots are
taken at steps ``t_i`` of EMAs with exponents ``gamma_i``; a target profile ``(t, gamma)`` is
approximated by ``sum_i w_i p_i`` with the weights of the normal equations ``A w = b``,
``A_ij = <p_i, p_j>``, ``b_i = <p_i, p_target>`` in ``L2(0, inf)`` (App. C.3, eq. 43-46, whose
inner products of two power profiles are closed form), and the parameters are
``sum_i w_i theta_i``.

Storage: :func:`save_snapshot` writes one ``step_<step>.npz`` per snapshot step into a directory
(the recipes use ``<workdir>/posthoc_ema``), holding every EMA's parameters as flat arrays keyed
``<gamma index>/<tree path>`` plus the exponents and the step; :func:`load_snapshots` reads them
back against a template tree.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re

import jax
import numpy as np

__all__ = [
    "SIGMA_REL_MAX",
    "Snapshot",
    "sigma_rel_of_gamma",
    "gamma_of_sigma_rel",
    "profile_inner_products",
    "solve_weights",
    "combine",
    "reconstruct",
    "save_snapshot",
    "load_snapshots",
    "parse_sigma_rel",
]

# sigma_rel at gamma = 0 (a uniform average of the whole run): the widest power-function EMA.
SIGMA_REL_MAX = 1.0 / (2.0 * np.sqrt(3.0))
# Relative L2 error of the fitted profile above which a target counts as not representable.
MAX_PROFILE_ERROR = 0.05
_FILE = re.compile(r"step_(\d+)\.npz$")


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """The power-function EMA with exponent ``gamma`` after ``step`` updates: ``params``."""

    step: int
    gamma: float
    params: object


def sigma_rel_of_gamma(gamma):
    """``sigma_rel = (gamma + 1)^0.5 (gamma + 2)^-1 (gamma + 3)^-0.5`` (EDM2 eq. 3)."""
    gamma = np.asarray(gamma, np.float64)
    return np.sqrt(gamma + 1.0) / ((gamma + 2.0) * np.sqrt(gamma + 3.0))


def gamma_of_sigma_rel(sigma_rel):
    """The exponent ``gamma > 0`` of the power-function EMA of width ``sigma_rel`` in
    ``(0, 1 / (2 sqrt 3))``: the largest real root of ``gamma^3 + 7 gamma^2 + (16 - s^-2) gamma +
    12 - s^-2 = 0`` (EDM2 eq. 3 squared and multiplied out)."""
    sigma_rel = float(sigma_rel)
    if not 0.0 < sigma_rel < SIGMA_REL_MAX:
        raise ValueError(
            f"sigma_rel must lie in (0, {SIGMA_REL_MAX:.4f}) (a power-function EMA with gamma > 0);"
            f" got {sigma_rel}"
        )
    inverse = sigma_rel**-2
    roots = np.roots([1.0, 7.0, 16.0 - inverse, 12.0 - inverse])
    return float(np.max(roots[np.abs(roots.imag) < 1e-9].real))


def profile_inner_products(steps_a, gammas_a, steps_b, gammas_b):
    """``<p_a, p_b>`` of power profiles ``p(tau) = (g + 1) tau^g / t^(g + 1)`` on ``[0, t]``:
    ``(g_a + 1)(g_b + 1) m^(g_a + g_b + 1) / ((g_a + g_b + 1) t_a^(g_a + 1) t_b^(g_b + 1))``
    with ``m = min(t_a, t_b)`` (EDM2 App. C.3), for every pair (a matrix), in float64 and
    log space so that large steps and exponents do not overflow."""
    t_a, g_a = (np.asarray(v, np.float64)[:, None] for v in (steps_a, gammas_a))
    t_b, g_b = (np.asarray(v, np.float64)[None, :] for v in (steps_b, gammas_b))
    total = g_a + g_b + 1.0
    log_value = (
        np.log(g_a + 1.0) + np.log(g_b + 1.0) + total * np.log(np.minimum(t_a, t_b))
        - np.log(total) - (g_a + 1.0) * np.log(t_a) - (g_b + 1.0) * np.log(t_b)
    )
    return np.exp(log_value)


def solve_weights(snapshot_steps, snapshot_gammas, *, step, gamma, max_error=MAX_PROFILE_ERROR):
    """Weights ``w`` of the snapshots whose combination ``sum_i w_i p_i`` is the least-squares
    fit of the power profile ``(step, gamma)`` (EDM2 App. C.3, eq. 46); returns ``(w,
    relative_error)`` with ``relative_error = ||sum_i w_i p_i - p|| / ||p||``.

    A one-line ``ValueError`` when the snapshots cannot represent the profile (relative error
    above ``max_error``: too few snapshots, or a width far outside the tracked ones), when a
    snapshot lies after ``step`` or the inputs are malformed.
    """
    steps = np.asarray(snapshot_steps, np.float64).reshape(-1)
    gammas = np.asarray(snapshot_gammas, np.float64).reshape(-1)
    if steps.size == 0 or steps.shape != gammas.shape:
        raise ValueError(
            f"need one gamma per snapshot and at least one snapshot; got {steps.size} steps and "
            f"{gammas.size} gammas"
        )
    if np.any(steps < 1) or np.any(gammas <= 0):
        raise ValueError("snapshot steps must be >= 1 and their gammas > 0")
    if step < np.max(steps):
        raise ValueError(f"a snapshot at step {int(np.max(steps))} lies after step {step}")
    matrix = profile_inner_products(steps, gammas, steps, gammas)
    target = profile_inner_products(steps, gammas, [step], [gamma])[:, 0]
    weights = np.linalg.lstsq(matrix, target, rcond=None)[0]
    norm = profile_inner_products([step], [gamma], [step], [gamma])[0, 0]
    squared = weights @ matrix @ weights - 2.0 * weights @ target + norm
    error = float(np.sqrt(max(squared, 0.0) / norm))
    if not error <= max_error:
        raise ValueError(
            f"the {steps.size} snapshots (sigma_rel "
            f"{sorted({round(float(s), 4) for s in sigma_rel_of_gamma(gammas)})}) cannot represent "
            f"sigma_rel {float(sigma_rel_of_gamma(gamma)):.4g} at step {step}: profile error "
            f"{error:.3g} > {max_error:g}; take more snapshots or a width nearer the tracked ones"
        )
    return weights, error


def combine(trees, weights):
    """``sum_i weights_i trees_i`` leaf by leaf (accumulated in float64, returned in each leaf's
    dtype)."""
    weights = np.asarray(weights, np.float64)

    def weighted_sum(*leaves):
        total = sum(w * np.asarray(leaf, np.float64) for w, leaf in zip(weights, leaves,
                                                                         strict=True))
        return total.astype(np.asarray(leaves[0]).dtype)

    return jax.tree.map(weighted_sum, *trees)


def reconstruct(snapshots, *, sigma_rel, step=None, max_error=MAX_PROFILE_ERROR):
    """The parameters of the power-function EMA of width ``sigma_rel`` at ``step`` (default: the
    last snapshot's) from ``snapshots`` (a sequence of :class:`Snapshot`; those after ``step``
    are left out): :func:`solve_weights` then :func:`combine`. Returns ``(params, error)``."""
    snapshots = list(snapshots)
    if not snapshots:
        raise ValueError("no post-hoc EMA snapshots to reconstruct from")
    step = max(s.step for s in snapshots) if step is None else int(step)
    used = [s for s in snapshots if s.step <= step]
    if not used:
        raise ValueError(f"no post-hoc EMA snapshot at or before step {step}")
    weights, error = solve_weights(
        [s.step for s in used], [s.gamma for s in used], step=step,
        gamma=gamma_of_sigma_rel(sigma_rel), max_error=max_error,
    )
    return combine([s.params for s in used], weights), error


def _flat(tree):
    paths_and_leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(path): leaf for path, leaf in paths_and_leaves}


def save_snapshot(directory, step, gammas, trees):
    """Write the EMAs ``trees`` (one parameter tree per exponent in ``gammas``) taken after
    ``step`` updates to ``<directory>/step_<step>.npz``; returns its path. Arrays must be on the
    host or fully addressable."""
    if len(gammas) != len(trees):
        raise ValueError(f"one tree per gamma; got {len(gammas)} gammas, {len(trees)} trees")
    os.makedirs(directory, exist_ok=True)
    arrays = {"step": np.asarray(step, np.int64), "gammas": np.asarray(gammas, np.float64)}
    for index, tree in enumerate(trees):
        for name, leaf in _flat(tree).items():
            arrays[f"{index}/{name}"] = np.asarray(jax.device_get(leaf))
    path = os.path.join(directory, f"step_{int(step):09d}.npz")
    partial = path + ".partial.npz"
    np.savez(partial, **arrays)
    os.replace(partial, path)  # a reader never sees half a file
    return path


def load_snapshots(directory, template, *, up_to_step=None):
    """Every :class:`Snapshot` in ``directory`` (steps up to ``up_to_step``), with parameters in
    the structure of ``template``; a one-line ``ValueError`` when there are none or a stored tree
    does not match the template."""
    paths = sorted(glob.glob(os.path.join(os.fspath(directory), "step_*.npz")))
    expected = _flat(template)
    treedef = jax.tree.structure(template)
    snapshots = []
    for path in paths:
        if not _FILE.search(path):
            continue
        with np.load(path) as stored:
            step = int(stored["step"])
            if up_to_step is not None and step > up_to_step:
                continue
            for index, gamma in enumerate(stored["gammas"]):
                names = [f"{index}/{name}" for name in expected]
                missing = [n for n in names if n not in stored.files]
                if missing:
                    raise ValueError(
                        f"{path} does not match the model: {len(missing)} parameters missing "
                        f"(first {missing[0]!r})"
                    )
                leaves = [stored[n] for n in names]
                snapshots.append(Snapshot(step, float(gamma), treedef.unflatten(leaves)))
    if not snapshots:
        where = "" if up_to_step is None else f" at or before step {up_to_step}"
        raise ValueError(f"no post-hoc EMA snapshots in {directory}{where}")
    return snapshots


def parse_sigma_rel(text):
    """``"sigma_rel=0.08"`` -> ``0.08``; ``None`` for any other string (an EMA name)."""
    if not isinstance(text, str) or not text.startswith("sigma_rel="):
        return None
    try:
        return float(text.split("=", 1)[1])
    except ValueError:
        raise ValueError(f"--ema {text!r}: expected sigma_rel=<number>, e.g. sigma_rel=0.08") from None
