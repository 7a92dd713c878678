"""The sampler table, derived from the descriptors each sampler module declares next to its code.

Every module of this package that defines samplers also defines a module-level tuple
``SAMPLERS`` of :class:`SamplerInfo` (name, function, stochastic, needs_key, order, NFE, options,
...). :data:`SAMPLERS` here is their concatenation, in module-name order, found by walking the
package's modules once at import; there is no mutable registry and nothing to register. Adding a
sampler is one module (its function and its ``SAMPLERS`` tuple) plus its test: ``get``, the
benchmark, the CLIs and the tests pick it up from this table.
"""

from __future__ import annotations

import importlib
import pkgutil

from diffusion_jax.samplers._info import COMMON_KEYWORDS, SamplerInfo, Variant

__all__ = ["SAMPLERS", "SamplerInfo", "Variant", "COMMON_KEYWORDS", "get", "names", "markdown_table"]

_PACKAGE = __name__.rpartition(".")[0]


def _discover():
    """The ``SAMPLERS`` tuples of the package's public modules, concatenated."""
    package = importlib.import_module(_PACKAGE)
    found = []
    for module_info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if module_info.name.startswith("_") or module_info.name == "registry":
            continue
        module = importlib.import_module(f"{_PACKAGE}.{module_info.name}")
        found.extend(getattr(module, "SAMPLERS", ()))
    names = [info.name for info in found]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"sampler names declared twice: {duplicates}")
    return tuple(found)


SAMPLERS: tuple[SamplerInfo, ...] = _discover()


def names():
    """The sampler names, in table order."""
    return tuple(info.name for info in SAMPLERS)


def get(name):
    """The :class:`SamplerInfo` called ``name``; a one-line ``ValueError`` listing the names."""
    for info in SAMPLERS:
        if info.name == name:
            return info
    raise ValueError(f"unknown sampler {name!r}; expected one of {', '.join(names())}")


def _formula(nfe):
    """The NFE formula of an NFE function: the first ````...```` of its docstring."""
    doc = nfe.__doc__ or ""
    parts = doc.split("``")
    return parts[1] if len(parts) > 2 else f"{nfe(1)}, {nfe(2)}, {nfe(3)}, ... for N = 1, 2, 3"


def _options(options):
    return ", ".join(f"{k}={v!r}" for k, v in options.items())


def markdown_table():
    """The sampler table of ``docs/samplers.md``, rendered from :data:`SAMPLERS`."""
    lines = [
        "| name | stochastic | key needed | order | NFE (N steps) | options | variants: order, NFE "
        "| summary | source |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for info in SAMPLERS:
        variants = "; ".join(
            f"`{_options(v.options)}`: {'-' if v.order is None else v.order}, {_formula(v.nfe)}"
            for v in info.variants
        )
        options = ", ".join(f"`{option}`" for option in info.options)
        order = "-" if info.order is None else str(info.order)
        lines.append(
            f"| `{info.name}` | {'yes' if info.stochastic else 'no'} | "
            f"{'yes' if info.needs_key else 'no'} | {order} | {_formula(info.nfe)} | {options} | "
            f"{variants} | {info.summary} | {info.source} |"
        )
    return "\n".join(lines)
