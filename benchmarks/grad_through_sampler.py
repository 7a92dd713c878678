"""Gradient through a sampler, and the forward pass, with the digits U-Net: JAX against PyTorch.

The network is the digits U-Net at 32x32x1 (base 32 channels, multipliers (1, 2), one residual
block per level, attention only in the middle: 0.70M parameters) behind EDM preconditioning
(sigma_data 0.5), on the Karras grid (0.002 to 80, rho 7). The work is ``grad`` of
``mean(x0**2)`` with respect to the network's parameters, where ``x0`` is Heun's sampler
(Karras et al. 2022, Alg. 1; NFE 2N - 1) from fixed unit noise. The same network written in
PyTorch (below) is differentiated with autograd through k-diffusion's ``sample_heun`` (its
``torch.no_grad`` decorator unwrapped). Every case runs in its own subprocess, which reports its
times and its peak resident memory (``resource.getrusage``'s ``ru_maxrss``); for JAX also XLA's
temporary buffer size of the compiled gradient. Sides of one case run back to back, so a change
of load hits both; the median of ``--repeats`` timed calls (after one warm-up call) is reported
(one timed call where batch x steps >= 2560). The JAX sides (``--sides``) are the rolled and the
unrolled scan, each optionally with ``checkpoint=True``, and the rolled scan through
``networks.with_fast_conv_gradients`` ("fast"). A JAX case whose compiled buffers exceed
``--max_memory_gb`` is compiled but not run; PyTorch runs under that address-space limit, and a
case that does not fit is reported as such.

``--mode conv --batch 8 --steps 8`` times one convolution's gradient in a ``lax.scan`` with
several unroll factors (``benchmarks/results/scan_conv_gradient.json``). ``--mode forward`` times
one U-Net call and the 18-step Heun sampler (no gradient) under several
XLA:CPU flag settings beside PyTorch.

``python benchmarks/grad_through_sampler.py --torch_python /path/to/venv/bin/python`` (a Python
with ``torch`` and ``k-diffusion``) prints a table and writes
``benchmarks/results/grad_through_sampler.json`` (``forward_xla_cpu.json`` for ``--mode
forward``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE = (32, 32, 1)
BASE_CHANNELS, MULTIPLIERS = 32, (1, 2)
SIGMA_MIN, SIGMA_MAX, RHO, SIGMA_DATA = 0.002, 80.0, 7.0, 0.5

# JAX sides: (label, sampler scan options; "fast": the network's convolutions with the
# canonical-layout VJP of ``networks.with_fast_conv_gradients``).
JAX_SIDES = {
    "jax rolled": {"unroll": 1},
    "jax unrolled": {"unroll": True},
    "jax unrolled checkpoint": {"unroll": True, "checkpoint": True},
    "jax fast": {"unroll": 1, "fast": True},
    "jax fast checkpoint": {"unroll": 1, "checkpoint": True, "fast": True},
}
DEFAULT_SIDES = "jax fast,jax fast checkpoint,torch"
# XLA:CPU settings tried for the forward pass (XLA_FLAGS of the subprocess).
XLA_SETTINGS = {
    "default": "",
    "no multi-thread eigen": "--xla_cpu_multi_thread_eigen=false",
    "onednn": "--xla_cpu_use_onednn=true",
    "no xnnpack": "--xla_cpu_use_xnnpack=false",
    "fast math": "--xla_cpu_enable_fast_math=true",
}


def _peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _timed(fn, repeats):
    """Seconds of ``repeats`` calls of ``fn`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


# -- JAX ----------------------------------------------------------------------------------------


def jax_worker(args):
    """One JAX case: gradient through Heun (or the forward pass), in this process."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    sys.path.insert(0, ROOT)
    from diffusion_jax import denoisers, networks, samplers

    network = networks.UNet(
        image_shape=IMAGE, base_channels=BASE_CHANNELS, channel_multipliers=MULTIPLIERS,
        num_res_blocks=1, attention_resolutions=(), rngs=nnx.Rngs(0),
    )
    scan = json.loads(args.scan)
    if scan.pop("fast", False):
        network = networks.with_fast_conv_gradients(network)
    graphdef, params, rest = nnx.split(network, nnx.Param, ...)
    # Perturb the zero-initialised output layer so every parameter gets a gradient.
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    params = treedef.unflatten(
        [leaf + 0.01 * jax.random.normal(k, leaf.shape) for leaf, k in zip(leaves, keys, strict=True)]
    )
    noise = jax.random.normal(jax.random.key(0), (args.batch, *IMAGE))
    sigmas = samplers.karras_sigmas(args.steps, SIGMA_MIN, SIGMA_MAX, RHO)

    def denoiser_of(params):
        model = nnx.merge(graphdef, params, rest)
        return denoisers.PreconditionedDenoiser(model, denoisers.EDMPreconditioning(SIGMA_DATA))

    def loss(params, noise):
        x0 = samplers.heun(denoiser_of(params), noise, sigmas, **scan)
        return jnp.mean(x0**2)

    if args.mode == "grad":
        fn = jax.jit(jax.grad(loss))
    elif args.mode == "sample":
        fn = jax.jit(lambda params, noise: samplers.heun(denoiser_of(params), noise, sigmas,
                                                          **scan))
    else:
        fn = jax.jit(lambda params, noise: nnx.merge(graphdef, params, rest)(
            noise, jnp.full((noise.shape[0],), 0.3)))
    start = time.perf_counter()
    compiled = fn.lower(params, noise).compile()
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    temp_mb = None if memory is None else memory.temp_size_in_bytes / 2**20
    if temp_mb is not None and temp_mb > 1024 * args.max_memory_gb:
        times = []  # not run: XLA's own buffer plan does not fit this machine
    else:
        times = _timed(lambda: jax.block_until_ready(compiled(params, noise)), args.repeats)
    return {
        "times_s": times, "compile_s": compile_s, "peak_rss_mb": _peak_rss_mb(),
        "xla_temp_mb": temp_mb,
        "parameters": sum(leaf.size for leaf in jax.tree.leaves(params)),
        "jax": jax.__version__, "backend": jax.default_backend(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def conv_loop_worker(args):
    """The effect behind the samplers' CPU unroll: ``grad`` (and the forward pass) of ``steps``
    3x3 convolutions (32 channels, 32x32, batch ``args.batch``) applied in a ``lax.scan`` with
    ``unroll`` 1, 2, 8 and all, per step."""
    import jax
    import jax.numpy as jnp

    x = jax.random.normal(jax.random.key(0), (args.batch, 32, 32, 32))
    w = jax.random.normal(jax.random.key(1), (3, 3, 32, 32)) * 0.05

    def loss(w, x, unroll):
        def body(h, _):
            out = jax.lax.conv_general_dilated(h, w, (1, 1), "SAME",
                                               dimension_numbers=("NHWC", "HWIO", "NHWC"))
            return jnp.tanh(out), None

        h, _ = jax.lax.scan(body, x, None, length=args.steps, unroll=unroll)
        return jnp.sum(h**2)

    rows = {}
    for unroll in (1, 2, 8, True):
        for name, fn in (("grad", jax.grad(loss)), ("forward", loss)):
            compiled = jax.jit(fn, static_argnums=2)
            times = _timed(lambda c=compiled, u=unroll: jax.block_until_ready(c(w, x, u)),
                           args.repeats)
            rows[f"{name} unroll={unroll}"] = statistics.median(times) / args.steps
    return {"ms_per_step": {k: 1e3 * v for k, v in rows.items()}, "times_s": [0.0],
            "peak_rss_mb": _peak_rss_mb(), "jax": jax.__version__,
            "xla_flags": os.environ.get("XLA_FLAGS", "")}


# -- PyTorch: the same network --------------------------------------------------------------------


def torch_unet():
    """The digits U-Net in PyTorch (NCHW): the layers, widths and skip scaling of
    ``diffusion_jax.networks.UNet`` with these settings (written for this benchmark)."""
    import torch
    from torch import nn

    def groups(channels):
        return max(g for g in range(1, min(32, channels) + 1) if channels % g == 0)

    class Resnet(nn.Module):
        def __init__(self, c_in, c_out, emb_dim):
            super().__init__()
            self.norm_1 = nn.GroupNorm(groups(c_in), c_in, eps=1e-6)
            self.conv_1 = nn.Conv2d(c_in, c_out, 3, padding=1)
            self.emb = nn.Linear(emb_dim, 2 * c_out)
            self.norm_2 = nn.GroupNorm(groups(c_out), c_out, eps=1e-6)
            self.conv_2 = nn.Conv2d(c_out, c_out, 3, padding=1)
            self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None

        def forward(self, x, emb):
            h = self.conv_1(nn.functional.silu(self.norm_1(x)))
            scale, shift = self.emb(nn.functional.silu(emb))[:, :, None, None].chunk(2, dim=1)
            h = self.conv_2(nn.functional.silu(self.norm_2(h) * (1 + scale) + shift))
            return ((x if self.skip is None else self.skip(x)) + h) / math.sqrt(2.0)

    class Attention(nn.Module):
        def __init__(self, channels):
            super().__init__()
            self.norm = nn.GroupNorm(groups(channels), channels, eps=1e-6)
            self.qkv = nn.Linear(channels, 3 * channels)
            self.out = nn.Linear(channels, channels)

        def forward(self, x):
            b, c, height, width = x.shape
            tokens = self.norm(x).flatten(2).transpose(1, 2)
            q, k, v = self.qkv(tokens).chunk(3, dim=-1)
            weights = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(c), dim=-1)
            out = self.out(weights @ v).transpose(1, 2).reshape(b, c, height, width)
            return (x + out) / math.sqrt(2.0)

    class UNet(nn.Module):
        def __init__(self, channels=1, base=BASE_CHANNELS):
            super().__init__()
            emb_dim, wide = 4 * base, 2 * base
            self.base = base
            self.linear_1, self.linear_2 = nn.Linear(base, emb_dim), nn.Linear(emb_dim, emb_dim)
            self.input_conv = nn.Conv2d(channels, base, 3, padding=1)
            self.down_1 = Resnet(base, base, emb_dim)
            self.downsample = nn.Conv2d(base, base, 3, stride=2, padding=1)
            self.down_2 = Resnet(base, wide, emb_dim)
            self.middle_1 = Resnet(wide, wide, emb_dim)
            self.middle_attention = Attention(wide)
            self.middle_2 = Resnet(wide, wide, emb_dim)
            self.up_2 = nn.ModuleList([Resnet(2 * wide, wide, emb_dim),
                                       Resnet(wide + base, wide, emb_dim)])
            self.upsample = nn.Conv2d(wide, wide, 3, padding=1)
            self.up_1 = nn.ModuleList([Resnet(wide + base, base, emb_dim),
                                       Resnet(2 * base, base, emb_dim)])
            self.output_norm = nn.GroupNorm(groups(base), base, eps=1e-6)
            self.output_conv = nn.Conv2d(base, channels, 3, padding=1)

        def forward(self, x, c_noise):
            half = self.base // 2
            frequencies = torch.exp(-math.log(1e4) * torch.arange(half) / half)
            angles = c_noise[:, None] * frequencies[None]
            emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
            emb = self.linear_2(nn.functional.silu(self.linear_1(emb)))
            h = self.input_conv(x)
            skips = [h]
            h = self.down_1(h, emb)
            skips.append(h)
            h = self.downsample(h)
            skips.append(h)
            h = self.down_2(h, emb)
            skips.append(h)
            h = self.middle_2(self.middle_attention(self.middle_1(h, emb)), emb)
            for block in self.up_2:
                h = block(torch.cat([h, skips.pop()], dim=1), emb)
            h = self.upsample(nn.functional.interpolate(h, scale_factor=2, mode="nearest"))
            for block in self.up_1:
                h = block(torch.cat([h, skips.pop()], dim=1), emb)
            return self.output_conv(nn.functional.silu(self.output_norm(h)))

    return UNet()


def k_diffusion_sampling():
    """``k_diffusion.sampling`` (its own code, unchanged). When the package's ``__init__`` cannot
    import (it pulls torchvision, scikit-image, wandb, ... which sampling does not use), the
    module is loaded from its file with a stand-in ``k_diffusion.utils`` holding the one helper
    it calls, ``append_dims``."""
    try:
        import k_diffusion.sampling as sampling

        return sampling
    except ImportError:
        pass
    import importlib.util
    import types

    spec = importlib.util.find_spec("k_diffusion")
    package = types.ModuleType("k_diffusion")
    package.__path__ = list(spec.submodule_search_locations)
    utils = types.ModuleType("k_diffusion.utils")
    utils.append_dims = lambda x, target_dims: x[(...,) + (None,) * (target_dims - x.ndim)]
    package.utils = utils
    sys.modules.update({"k_diffusion": package, "k_diffusion.utils": utils})
    location = os.path.join(package.__path__[0], "sampling.py")
    module_spec = importlib.util.spec_from_file_location("k_diffusion.sampling", location)
    sampling = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(sampling)
    return sampling


def torch_worker(args):
    """One PyTorch case: autograd through k-diffusion's ``sample_heun`` (or the forward pass)."""
    import torch

    kd = k_diffusion_sampling()

    torch.manual_seed(0)
    network = torch_unet()
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn((args.batch, IMAGE[2], *IMAGE[:2]), generator=generator)
    sigmas = kd.get_sigmas_karras(args.steps, SIGMA_MIN, SIGMA_MAX, RHO)

    def denoiser(x, sigma):  # EDM preconditioning, Karras et al. 2022, Table 1
        s = sigma[:, None, None, None]
        total = s**2 + SIGMA_DATA**2
        c_skip, c_out, c_in = SIGMA_DATA**2 / total, s * SIGMA_DATA / total.sqrt(), total.rsqrt()
        return c_skip * x + c_out * network(c_in * x, sigma.log() / 4)

    sample_heun = getattr(kd.sample_heun, "__wrapped__", kd.sample_heun)  # drop no_grad

    def grad():
        network.zero_grad()
        x0 = sample_heun(denoiser, noise * sigmas[0], sigmas, disable=True)
        x0.pow(2).mean().backward()

    def sample():
        with torch.no_grad():
            sample_heun(denoiser, noise * sigmas[0], sigmas, disable=True)

    def forward():
        with torch.no_grad():
            network(noise, torch.full((args.batch,), 0.3))

    fn = {"grad": grad, "sample": sample, "forward": forward}[args.mode]
    limit = int(args.max_memory_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        times = _timed(fn, args.repeats)
    except (MemoryError, RuntimeError) as error:  # torch's allocator failing under the limit
        if "memory" not in str(error).lower() and not isinstance(error, MemoryError):
            raise
        times = []
    return {
        "times_s": times, "peak_rss_mb": _peak_rss_mb(), "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "parameters": sum(p.numel() for p in network.parameters()),
    }


# -- driver ------------------------------------------------------------------------------------------


def thread_environment(threads, xla_flags=""):
    """The environment of a worker: ``threads`` > 0 limits both sides to that many threads
    (OpenMP / PyTorch intra-op; XLA:CPU's Eigen pool off for 1)."""
    env = dict(os.environ)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        if threads == 1:
            xla_flags = (xla_flags + " --xla_cpu_multi_thread_eigen=false").strip()
    if xla_flags:
        env["XLA_FLAGS"] = xla_flags
    return env


def run_case(python, side, mode, batch, steps, repeats, scan=None, xla_flags="", threads=0,
             max_memory_gb=14.0):
    """Run one case in a subprocess; its JSON result with ``median_s`` added (``None`` when the
    case did not fit in ``max_memory_gb``)."""
    command = [python, os.path.abspath(__file__), "--worker", side, "--mode", mode,
               "--batch", str(batch), "--steps", str(steps), "--repeats", str(repeats),
               "--scan", json.dumps(scan or {}), "--max_memory_gb", str(max_memory_gb)]
    env = thread_environment(threads, xla_flags)
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode:
        return {"error": done.stderr.strip().splitlines()[-1:]}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["median_s"] = statistics.median(result["times_s"]) if result["times_s"] else None
    return result


def _repeats(args, batch, steps):
    """Fewer timed calls for the largest cases (each takes minutes on a 2-core CPU)."""
    return 1 if batch * steps >= 2560 else args.repeats


def grad_cases(args):
    results = []
    for case in args.cases.split(","):
        batch, steps = (int(v) for v in case.split("x"))
        for label in args.sides.split(","):
            if label == "torch" and args.torch_python:
                result = run_case(args.torch_python, "torch", "grad", batch, steps,
                                  _repeats(args, batch, steps), threads=args.threads,
                                  max_memory_gb=args.max_memory_gb)
                results.append(dict(result, side="torch k-diffusion", batch=batch,
                                    steps=steps, threads=args.threads))
            elif label in JAX_SIDES:
                result = run_case(sys.executable, "jax", "grad", batch, steps,
                                  _repeats(args, batch, steps), JAX_SIDES[label],
                                  threads=args.threads, max_memory_gb=args.max_memory_gb)
                results.append(dict(result, side=label, batch=batch, steps=steps,
                                    scan=JAX_SIDES[label], threads=args.threads))
            else:
                continue
            _print(results[-1])
    return results


def forward_cases(args):
    results = []
    modes = [("forward", 1)] + ([("sample", args.sample_steps)] if args.sample_steps else [])
    for mode, steps in modes:
        for label, flags in XLA_SETTINGS.items():
            results.append(dict(run_case(sys.executable, "jax", mode, 64, steps, args.repeats,
                                         xla_flags=flags, threads=args.threads),
                                side=f"jax {label}", mode=mode, batch=64, steps=steps))
            _print(results[-1])
        if args.torch_python:
            results.append(dict(run_case(args.torch_python, "torch", mode, 64, steps,
                                         args.repeats, threads=args.threads), side="torch",
                                mode=mode, batch=64, steps=steps))
            _print(results[-1])
    return results


def _print(result):
    if "error" in result:
        print(f"{result['side']:>22} batch {result['batch']:>3} steps {result['steps']:>2}: "
              f"FAILED {result['error']}", flush=True)
        return
    temp = result.get("xla_temp_mb")
    if result.get("median_s") is None:
        print(f"{result['side']:>22} batch {result['batch']:>3} steps {result['steps']:>2}: "
              "did not fit in --max_memory_gb"
              + ("" if temp is None else f" (XLA temp {temp:7.0f} MB)"), flush=True)
        return
    print(f"{result['side']:>22} batch {result['batch']:>3} steps {result['steps']:>2}: "
          f"{result['median_s']:7.3f} s  peak RSS {result['peak_rss_mb']:7.0f} MB"
          + ("" if temp is None else f"  XLA temp {temp:7.0f} MB")
          + (f"  compile {result['compile_s']:.1f} s" if "compile_s" in result else ""),
          flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", default="grad", choices=("grad", "forward", "sample", "conv"))
    parser.add_argument("--cases", default="64x10,256x10,64x50,256x50",
                        help="comma-separated BATCHxSTEPS")
    parser.add_argument("--sides", default=DEFAULT_SIDES,
                        help=f"comma-separated, of: {', '.join(JAX_SIDES)}, torch")
    parser.add_argument("--threads", type=int, default=0,
                        help="threads per side (0: each library's default)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sample_steps", type=int, default=18,
                        help="--mode forward: also time Heun with this many steps (0: skip)")
    parser.add_argument("--torch_python", default="", help="a Python with torch and k-diffusion")
    parser.add_argument("--max_memory_gb", type=float, default=14.0,
                        help="a JAX case whose compiled buffers exceed this is not run; a "
                             "PyTorch case runs under this address-space limit")
    parser.add_argument("--output", default="")
    parser.add_argument("--note", default="", help="recorded in the JSON (e.g. the machine's load)")
    parser.add_argument("--worker", choices=("jax", "torch", "conv"), help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=64, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=10, help=argparse.SUPPRESS)
    parser.add_argument("--scan", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker = {"jax": jax_worker, "torch": torch_worker, "conv": conv_loop_worker}[args.worker]
        print(json.dumps(worker(args)))
        return
    if args.mode == "conv":
        result = run_case(sys.executable, "conv", "conv", args.batch, args.steps, args.repeats,
                          threads=args.threads)
        print(json.dumps(result.get("ms_per_step", result), indent=1))
        with open(args.output or os.path.join(ROOT, "benchmarks", "results",
                                              "scan_conv_gradient.json"), "w") as f:
            json.dump(dict(result, batch=args.batch, steps=args.steps, threads=args.threads,
                           note="CPU shared with other jobs"), f, indent=1)
        return
    results = grad_cases(args) if args.mode == "grad" else forward_cases(args)
    name = "grad_through_sampler.json" if args.mode == "grad" else "forward_xla_cpu.json"
    output = args.output or os.path.join(ROOT, "benchmarks", "results", name)
    with open(output, "w") as f:
        json.dump({"machine": platform.processor() or platform.machine(),
                   "cpu_count": os.cpu_count(), "repeats": args.repeats,
                   "max_memory_gb": getattr(args, "max_memory_gb", None), "note": args.note,
                   "results": results}, f, indent=1)
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
