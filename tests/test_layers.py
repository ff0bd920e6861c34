"""The package reads as one direction of flow: config -> plan (model, data, blocks) -> engine ->
results -> report, with shared utilities below. No module imports a layer above its own."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "raylsl"

LAYERS = [
    {"errors", "fetch", "storage", "lease", "cluster", "callbacks", "tracking"},  # shared utilities
    {"config"},
    {"data", "images", "models", "optim"},
    {"objective", "lora", "export"},
    {"selectors"},
    {"plan", "fit", "scoring"},  # config -> plan: where blocks are scored, whether the run fits
    {"assemble"},  # plan -> a model to train
    {"training", "evaluation"},  # the engine, single process
    {"distributed"},  # the engine in Ray Train workers
    {"results"},
    {"report"},
    {"sweep"},
    {"recipes"},  # parse, call, print
    {"api", "cli", "__init__", "__main__"},
]


def _layer(unit: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if unit in layer)


def _unit(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def _imported_units(path: Path) -> set[str]:
    units = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("raylsl."):
            units.add(node.module.split(".")[1])
        elif isinstance(node, ast.ImportFrom) and node.module == "raylsl":
            units.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            units.update(a.name.split(".")[1] for a in node.names if a.name.startswith("raylsl."))
    return units


def test_every_module_is_in_a_layer():
    units = {_unit(path) for path in PACKAGE.rglob("*.py")}
    assert units <= set().union(*LAYERS), units - set().union(*LAYERS)


def test_no_module_imports_a_layer_above_it():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        mine = _layer(_unit(path))
        for unit in _imported_units(path):
            if _layer(unit) > mine:
                upward.append(f"{path.relative_to(PACKAGE.parent)} imports raylsl.{unit}")
    assert not upward, upward
