"""Lower layers never import higher ones (style.md): models, data < importance,
training < methods < experiment < cli; evaluation and task kinds are below training;
the driver's phases (loop, finalize, results, clock, feed) never import the driver."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "heat_jax"

# module (file or package under heat_jax/) -> heat_jax modules it must not import
FORBIDDEN = {
    "models": ("data", "importance", "training", "methods", "evaluation", "experiment",
               "artifacts", "cli", "study", "sweep"),
    "data": ("models", "importance", "training", "methods", "evaluation", "experiment",
             "artifacts", "cli", "study", "sweep"),
    "evaluation.py": ("training", "methods", "importance", "experiment", "cli", "tasks"),
    "tasks": ("training", "methods", "importance", "evaluation", "experiment", "cli",
              "models", "data"),
    "feed.py": ("training", "methods", "importance", "experiment", "cli", "models"),
    "clock.py": ("training", "methods", "experiment", "cli", "models", "data"),
    "results.py": ("training", "methods", "experiment", "cli", "loop", "finalize"),
    "loop.py": ("methods", "experiment", "cli", "finalize", "study", "sweep"),
    "finalize.py": ("methods", "experiment", "cli", "loop", "study", "sweep"),
    "importance": ("training", "methods", "experiment", "cli", "study", "sweep"),
    "training": ("methods", "importance", "experiment", "cli", "study", "sweep"),
    "methods": ("experiment", "cli", "study", "sweep"),
}


def _imports(path: Path) -> set[str]:
  """heat_jax submodules imported anywhere in `path` (top level or inside functions)."""
  out = set()
  for node in ast.walk(ast.parse(path.read_text())):
    names = []
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    for name in names:
      parts = name.split(".")
      if parts[0] == "heat_jax" and len(parts) > 1:
        out.add(parts[1] if not parts[1].endswith(".py") else parts[1][:-3])
  return out


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_nothing_above_it(layer):
  root = PACKAGE / layer
  files = [root] if root.suffix == ".py" else sorted(root.rglob("*.py"))
  assert files, layer
  bad = {str(f.relative_to(PACKAGE)): sorted(_imports(f) & set(
      m.removesuffix(".py") for m in FORBIDDEN[layer])) for f in files}
  bad = {k: v for k, v in bad.items() if v}
  assert not bad, f"{layer} imports higher layers: {bad}"
