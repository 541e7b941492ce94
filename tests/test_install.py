"""The install: declared dependencies match what heat_jax imports; pytest's options.

pyproject.toml is read with tomllib and every module of heat_jax/ is scanned with `ast`,
so no fresh virtual environment is needed (that check is done by hand; see the README).
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "heat_jax"
FIRST_PARTY = {"heat_jax", "configs"}  # configs/: the checkout's thin copies

# Distribution (normalised) -> its top-level import name, where the two differ.
IMPORT_NAMES = {
    "absl-py": "absl", "array-record": "array_record", "huggingface-hub": "huggingface_hub",
    "importlib-resources": "importlib_resources", "ml-collections": "ml_collections",
    "orbax-checkpoint": "orbax", "pillow": "PIL", "scikit-image": "skimage",
    "scikit-learn": "sklearn", "tensorboardx": "tensorboardX",
    "tensorflow-cpu": "tensorflow", "tensorflow-datasets": "tensorflow_datasets",
}

# Runtime dependencies that heat_jax never imports, and why they are declared.
NOT_IMPORTED = {
    # tfds 4.9.10 imports it (tensorflow_datasets/core/dataset_builder.py) without
    # declaring it.
    "importlib_resources",
    # tfds.data_source reads prepared array_record files with it; tfds declares it for
    # Linux only.
    "array_record",
}

# Imports allowed outside the runtime dependencies: module -> the extra declaring it.
# Each must be imported lazily (inside a function), so `import heat_jax...` never needs it.
OPTIONAL = {
    "tensorflow": "tf",        # heat_jax.data.prepare: preparing TFDS datasets
    "tensorboardX": "tb",      # heat_jax.training.metrics: TensorBoard event files
    "torch": "tools",          # heat_jax.checkpoints.swin_timm: Microsoft .pth files
    "onnx": "real",            # heat_jax.checkpoints.onnx_vit: ONNX ViT checkpoints
}


def _normalise(requirement: str) -> str:
  name = re.match(r"[A-Za-z0-9._-]+", requirement.strip()).group(0)
  return re.sub(r"[-_.]+", "-", name).lower()


def _module(requirement: str) -> str:
  dist = _normalise(requirement)
  return IMPORT_NAMES.get(dist, dist.replace("-", "_"))


def _project() -> dict:
  with open(ROOT / "pyproject.toml", "rb") as f:
    return tomllib.load(f)["project"]


def _imports() -> dict[str, list[tuple[str, bool]]]:
  """Third-party top-level module -> [(file:line, at module level?)] over heat_jax/."""
  found: dict[str, list[tuple[str, bool]]] = {}

  def visit(node: ast.AST, where: Path, in_function: bool) -> None:
    for child in ast.iter_child_nodes(node):
      if isinstance(child, ast.Import):
        names = [a.name for a in child.names]
      elif isinstance(child, ast.ImportFrom) and child.level == 0:
        names = [child.module]
      else:
        names = []
      for name in names:
        top = name.split(".")[0]
        if top not in sys.stdlib_module_names and top not in FIRST_PARTY:
          found.setdefault(top, []).append(
              (f"{where.relative_to(ROOT)}:{child.lineno}", not in_function))
      visit(child, where, in_function or isinstance(
          child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

  for path in sorted(PACKAGE.rglob("*.py")):
    visit(ast.parse(path.read_text(), str(path)), path, False)
  return found


def test_every_import_is_declared_and_every_dependency_used():
  project = _project()
  runtime = {_module(r) for r in project["dependencies"]}
  extras = {name: {_module(r) for r in reqs}
            for name, reqs in project["optional-dependencies"].items()}
  imports = _imports()
  assert {"jax", "flax", "numpy", "tensorflow_datasets"} <= set(imports)  # the scan works

  undeclared = {m: sites for m, sites in imports.items()
                if m not in runtime and m not in OPTIONAL}
  assert not undeclared, f"imported by heat_jax but not a runtime dependency: {undeclared}"
  unused = runtime - set(imports) - NOT_IMPORTED
  assert not unused, f"declared runtime dependencies that heat_jax never imports: {unused}"
  stale = NOT_IMPORTED & set(imports)
  assert not stale, f"imported after all, drop them from NOT_IMPORTED: {stale}"
  assert NOT_IMPORTED <= runtime
  for module, extra in OPTIONAL.items():
    assert module in extras.get(extra, set()), f"{module} is not in the [{extra}] extra"
    eager = [site for site, top_level in imports.get(module, []) if top_level]
    assert not eager, f"optional {module} imported at module level: {eager}"
    assert module not in runtime, f"{module} is optional but a runtime dependency"


def test_import_name_table_matches_the_installed_distributions():
  """IMPORT_NAMES is checked against the metadata of whatever is installed here."""
  provided = importlib.metadata.packages_distributions()
  checked = 0
  for dist, module in IMPORT_NAMES.items():
    installed = {_normalise(d) for d in provided.get(module, [])}
    if installed:
      assert dist in installed, f"{module} comes from {installed}, not {dist}"
      checked += 1
  assert checked >= 8  # the runtime and test dependencies are installed in CI


def test_extras_are_pinned_in_requirements():
  """Every declared package has a tested version in requirements.txt."""
  pins = {}
  for line in (ROOT / "requirements.txt").read_text().splitlines():
    line = line.split("#")[0].strip()
    if line:
      name, version = line.split("==")
      pins[_normalise(name)] = version
  project = _project()
  declared = set(project["dependencies"])
  for name, reqs in project["optional-dependencies"].items():
    if name not in ("test", "tf"):  # test tools and TF float with their ranges
      declared |= set(reqs)
  missing = sorted({_normalise(r) for r in declared} - set(pins))
  assert not missing, f"not pinned in requirements.txt: {missing}"


def test_digits_asset_is_sklearn_digits():
  sklearn_datasets = pytest.importorskip("sklearn.datasets",
                                         reason="scikit-learn is in the [test] extra")
  from heat_jax.assets import load_digits
  images, labels = load_digits()
  ref = sklearn_datasets.load_digits()
  assert images.dtype == np.uint8 and images.shape == (1797, 8, 8)
  np.testing.assert_array_equal(images, ref.images)
  np.testing.assert_array_equal(labels, ref.target)
  with pytest.raises(ValueError):
    images[0, 0, 0] = 1  # the cached copy is shared: read-only


def test_pytest_q_prints_the_summary_line(tmp_path):
  """`python -m pytest -q tests` (the README) must end with `N passed in Xs`."""
  (tmp_path / "test_one.py").write_text("def test_ok():\n  assert 1 + 1 == 2\n")
  out = subprocess.run(
      [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
       "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(tmp_path),
       str(tmp_path / "test_one.py")], capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stdout + out.stderr
  assert re.search(r"^1 passed in [\d.]+s", out.stdout, re.M), out.stdout


def _venv_with_heat_jax(tmp_path: Path, *, editable: bool) -> Path:
  """A fresh venv (no pip of its own) that sees this interpreter's packages through a
  .pth file, with this checkout installed into it by pip (no deps, no build isolation:
  offline); returns its bin/ folder."""
  venv = tmp_path / "venv"
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                 timeout=120)
  site = next((venv / "lib").glob("python3*/site-packages"))
  import site as site_module
  parents = [p for p in site_module.getsitepackages() if Path(p).is_dir()]
  (site / "zz_parent_site.pth").write_text(
      "".join(f"import site; site.addsitedir({p!r})\n" for p in parents))
  python = venv / "bin" / "python"
  install = subprocess.run(
      [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
       "--ignore-installed", *(["-e"] if editable else []), str(ROOT)],
      capture_output=True, text=True, timeout=600, cwd=tmp_path)
  assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-3000:]
  return venv / "bin"


def _clean_env(tmp_path: Path) -> dict:
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
  return {**env, "HEAT_JAX_CACHE": str(tmp_path / "cache"), "HEAT_JAX_NO_TENSORBOARD": "1",
          "JAX_PLATFORMS": "cpu"}


@pytest.mark.parametrize("editable", [True, False], ids=["pip_install_-e", "pip_install"])
def test_heat_jax_command_from_another_directory(tmp_path, editable):
  """`pip install [-e] .` gives a `heat-jax` command whose packaged configs work from a
  directory outside the checkout (no configs/ folder there, nothing on PYTHONPATH)."""
  bin_dir = _venv_with_heat_jax(tmp_path, editable=editable)
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  env = _clean_env(tmp_path)
  where = subprocess.run([str(bin_dir / "python"), "-c",
                          "import heat_jax.configs.smoke as m; print(m.__file__)"],
                         cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
  assert where.returncode == 0, where.stderr[-2000:]
  if not editable:   # the configs were copied into the venv, not read from the checkout
    assert str(tmp_path / "venv") in where.stdout, where.stdout
  helped = subprocess.run([str(bin_dir / "heat-jax"), "--help"], cwd=elsewhere, env=env,
                          capture_output=True, text=True, timeout=300)
  assert helped.returncode == 0, helped.stderr[-2000:]
  assert helped.stdout.startswith("Trains and evaluates one PETL run")
  assert "(ade20k, demo, folder, real, smoke, smoke_seg, vtab)" in helped.stdout
  if not editable:   # the sweep of an installed package: packaged names, no run.py
    swept = subprocess.run([str(bin_dir / "python"), "-m", "heat_jax.sweep", "--config=smoke",
                            "--tasks=texture", "--methods=linear", "--seeds=0",
                            "--config_args=model=ViT-micro", "--workdir=s"], cwd=elsewhere,
                           env=env, capture_output=True,
                           text=True, timeout=600)
    assert swept.returncode == 0, swept.stderr[-3000:]
    log = (elsewhere / "s" / "texture" / "linear" / "seed0" / "log.txt").read_text()
    assert " -m heat_jax.cli --config=" in log, log[:2000]
    assert json.loads((elsewhere / "s" / "texture" / "linear" / "seed0" / "results.json")
                      .read_text())["method"] == "linear"
    return   # one training run per install mode is enough: the editable one (CI's)
  ran = subprocess.run([str(bin_dir / "heat-jax"), "--config=smoke:method=lora",
                        "--config.train.max_steps=2", "--config.train.progress=False",
                        "--workdir=w"], cwd=elsewhere, env=env, capture_output=True,
                       text=True, timeout=600)
  assert ran.returncode == 0, ran.stderr[-3000:]
  results = json.loads((elsewhere / "w" / "results.json").read_text())
  assert results["method"] == "lora" and results["steps"] == 2
  assert "test top-1" in ran.stdout
  from tests.test_folder_config import make_folder
  images = make_folder(tmp_path / "images")   # 3 classes x 10 images
  ran = subprocess.run([str(bin_dir / "heat-jax"), f"--config=folder:root={images},"
                        "model=ViT-micro,epochs=1", "--config.train.progress=False",
                        "--workdir=f"], cwd=elsewhere, env=env, capture_output=True,
                       text=True, timeout=600)
  assert ran.returncode == 0, ran.stderr[-3000:]
  assert json.loads((elsewhere / "f" / "results.json").read_text())["num_classes"] == 3
