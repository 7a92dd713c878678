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

__all__ = ["SAMPLERS", "SamplerInfo", "Variant", "COMMON_KEYWORDS", "get", "names"]

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
