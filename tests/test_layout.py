"""The layering of ``docs/architecture.md`` holds: no module imports upward across layers, no
family imports another family, no CLI imports another CLI, and the CLIs stay thin."""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "diffusion_jax")

# lowest first; a module may import only from its own layer or the layers below
LAYERS = {
    "infrastructure": ("callables", "pytrees", "typing", "networks", "data", "training", "sharding",
                       "checkpoints", "runlock", "metrics",
                       "posthoc_ema"),
    "core": ("processes", "denoisers", "schedules", "losses", "samplers", "likelihood",
             "guidance", "analytic", "learned_schedule",
             "grid_learning"),
    "families": ("flows", "flowmaps", "discrete", "latent"),
    "recipes": ("recipes",),
}
ORDER = list(LAYERS)
FAMILIES = set(LAYERS["families"])
CLIS = ("train.py", "sample.py", "evaluate.py", "learn_grid.py")


def _top(module):
    """``diffusion_jax.samplers.ode`` -> ``samplers``; ``None`` outside the package."""
    parts = module.split(".")
    return parts[1] if parts[0] == "diffusion_jax" and len(parts) > 1 else None


def _layer(top):
    for layer, members in LAYERS.items():
        if top in members:
            return layer
    raise AssertionError(f"diffusion_jax.{top} is in no layer: add it to docs/architecture.md "
                         "and to LAYERS in this test")


def _imports(path, module):
    tree = ast.parse(open(path).read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import: resolve against the module's package
                base = module.split(".")[: -node.level]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            yield name
            for alias in node.names:  # `from diffusion_jax import samplers`
                if name == "diffusion_jax":
                    yield f"diffusion_jax.{alias.name}"


def _modules():
    for directory, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                relative = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                module = relative[: -len(".__init__")] if relative.endswith("__init__") else relative
                yield path, module


def test_no_upward_or_cross_family_imports():
    violations = []
    for path, module in _modules():
        top = _top(module)
        if top is None:  # the package facade (diffusion_jax/__init__.py) may reach any layer
            continue
        level = ORDER.index(_layer(top))
        for imported in _imports(path, module):
            other = _top(imported)
            if other is None or other == top:
                continue
            other_level = ORDER.index(_layer(other))
            if other_level > level:
                violations.append(f"{module} imports {imported} ({ORDER[other_level]} > "
                                  f"{ORDER[level]})")
            elif top in FAMILIES and other in FAMILIES:
                violations.append(f"family {module} imports family {imported}")
    assert not violations, "\n".join(violations)


def test_clis_are_thin_and_do_not_import_each_other():
    for cli in CLIS:
        path = os.path.join(ROOT, cli)
        lines = open(path).read().splitlines()
        assert len(lines) <= 150, f"{cli} has {len(lines)} lines; move logic into recipes"
        names = set(_imports(path, cli[:-3]))
        for other in CLIS:
            assert other[:-3] not in names, f"{cli} imports {other}"
    for path, module in _modules():
        names = set(_imports(path, module))
        assert not names & {c[:-3] for c in CLIS}, f"{module} imports a CLI"


def test_the_layer_table_matches_the_package():
    tops = {name[:-3] if name.endswith(".py") else name for name in os.listdir(PACKAGE)
            if not name.startswith("_") and (name.endswith(".py") or
                                             os.path.isdir(os.path.join(PACKAGE, name)))}
    tops.discard("__pycache__")
    for top in tops:
        _layer(top)  # raises for a module in no layer
