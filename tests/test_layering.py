"""The package's data flow runs one way: no module imports from a later layer."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "src" / "lagrangian_lens"
LAYERS = ["errors", "checks", "compat", "provenance", "nn", "models", "data", "training", "trajectories", "mechanics",
          "analysis", "steering", "experiments", "report", "doctor", "cli"]


def layer_of(module_path: Path) -> str:
    rel = module_path.relative_to(ROOT)
    return rel.parts[0].removesuffix(".py")


def imported_layers(path: Path) -> set[str]:
    package = path.relative_to(ROOT).parts[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            base = list(package[: len(package) - node.level + 1]) if node.level > 1 else list(package)
            parts = base + (node.module.split(".") if node.module else [])
            if parts:
                found.add(parts[0])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lagrangian_lens."):
            found.add(node.module.split(".")[1])
    return found & set(LAYERS)


MODULES = sorted(p for p in ROOT.rglob("*.py") if layer_of(p) in LAYERS)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_import_runs_backwards(path):
    own = LAYERS.index(layer_of(path))
    later = {name for name in imported_layers(path) if LAYERS.index(name) > own}
    assert not later, f"{path.relative_to(ROOT)} imports from later layer(s) {sorted(later)}"


def test_the_check_sees_imports():
    assert imported_layers(ROOT / "experiments" / "energy.py") >= {"mechanics", "trajectories"}
