"""The Colab notebook: its offline path runs end to end (nbclient, python3 kernel).

The online cells (checkpoint download, TFDS, ViT-B/16 training) are skipped through
`HEAT_JAX_NOTEBOOK_OFFLINE=1`; they are still parsed, and the APIs they call checked.
"""

from __future__ import annotations

import base64
import contextlib
import importlib.metadata
import json
import os
import pathlib
import sys

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "heat_jax_colab.ipynb"
# A tiny demo: one task, HEAT and the linear probe, one epoch, 20 pretraining steps.
TINY_DEMO = ("tasks=texture,variants=heat+linear,epochs=1,budget=4,pretrain_steps=20,"
             "pretrain_images=640")


def _code_cells(nb) -> list[str]:
  return [c.source for c in nb.cells if c.cell_type == "code"]


def test_notebook_cells_parse_and_name_the_public_api():
  from IPython.core.inputtransformer2 import TransformerManager
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  sources = _code_cells(nb)
  for i, src in enumerate(sources):
    compile(TransformerManager().transform_cell(src), f"cell {i}", "exec")
  text = "\n".join(sources)
  for needle in ('load_pretrained("ViT-B_16", model)', "heat_jax.data.prepare", '"dtd"',
                 "compute_tis(", "scoring_params(", "plot_importance(", "experiment.run(",
                 "vtab.get_config(", "demo.get_config(", "study.run(",
                 "HEAT_JAX_NOTEBOOK_OFFLINE"):
    assert needle in text, needle
  import heat_jax.checkpoints as checkpoints
  import heat_jax.data as data
  import heat_jax.importance as importance
  from heat_jax.checkpoints.registry import get_checkpoint
  assert callable(checkpoints.load_pretrained) and callable(data.build_task)
  assert callable(importance.compute_tis) and callable(importance.select_heads)
  assert callable(importance.plot_importance)
  assert get_checkpoint("ViT-B_16").url.startswith("https://")


def test_notebook_offline_path_runs(tmp_path, monkeypatch):
  workdir = tmp_path / "demo"
  monkeypatch.setenv("HEAT_JAX_NOTEBOOK_OFFLINE", "1")
  monkeypatch.setenv("HEAT_JAX_NOTEBOOK_DEMO_ARGS", TINY_DEMO)
  monkeypatch.setenv("HEAT_JAX_NOTEBOOK_WORKDIR", str(workdir))
  monkeypatch.setenv("HEAT_JAX_CACHE", str(tmp_path / "cache"))
  monkeypatch.setenv("HEAT_JAX_NO_TENSORBOARD", "1")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  nb = nbformat.read(NOTEBOOK, as_version=4)
  client = NotebookClient(nb, kernel_name="python3", timeout=300,
                          resources={"metadata": {"path": str(NOTEBOOK.parent)}})
  client.execute()

  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
  assert not [o for o in outputs if o.output_type == "error"]
  streams = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
  assert "ONLINE = False" in streams
  assert streams.count("offline: skipped") == 4          # the four online steps
  # The table: written to the workdir and displayed as Markdown.
  table = (workdir / "results.md").read_text()
  assert "NOT a VTAB result" in table
  for variant in ("heat", "linear"):
    assert f"| {variant} |" in table
  shown = [o["data"]["text/markdown"] for o in outputs
           if o.output_type == "display_data" and "text/markdown" in o.get("data", {})]
  assert shown and "| heat |" in shown[-1]
  rows = json.loads((workdir / "results.json").read_text())
  assert {(r["task"], r["variant"]) for r in rows} == {("texture", "heat"),
                                                       ("texture", "linear")}
  # The heatmap: written by the HEAT run and displayed as a PNG.
  heatmap = workdir / "texture" / "heat" / "seed0" / "importance.png"
  assert heatmap.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  images = [o["data"]["image/png"] for o in outputs
            if o.output_type == "display_data" and "image/png" in o.get("data", {})]
  assert images and base64.b64decode(images[-1]) == heatmap.read_bytes()
  # The backbone was pretrained into the (temporary) cache, not the user's.
  assert list((tmp_path / "cache" / "demo").glob("backbone-ViT-demo-*.npz"))


def _run_flag_cell(monkeypatch, urlopen) -> dict:
  nb = nbformat.read(NOTEBOOK, as_version=4)
  flag_cell = next(s for s in _code_cells(nb) if "ONLINE = False" in s)
  import urllib.request
  monkeypatch.setattr(urllib.request, "urlopen", urlopen)
  scope = {"os": os}
  exec(compile(flag_cell, "flag cell", "exec"), scope)
  return scope


def test_flag_cell_offline_env_skips_the_network(monkeypatch):
  calls = []
  monkeypatch.setenv("HEAT_JAX_NOTEBOOK_OFFLINE", "1")
  scope = _run_flag_cell(monkeypatch, lambda *a, **k: calls.append(a))
  assert scope["ONLINE"] is False and scope["RUN_DEMO"] is True and not calls


def test_flag_cell_detects_reachability(monkeypatch):
  monkeypatch.delenv("HEAT_JAX_NOTEBOOK_OFFLINE", raising=False)
  monkeypatch.delenv("HEAT_JAX_NOTEBOOK_DEMO", raising=False)
  urls = []

  def unreachable(request, timeout):
    urls.append((request.full_url, timeout))
    raise OSError("network is unreachable")

  scope = _run_flag_cell(monkeypatch, unreachable)
  assert scope["ONLINE"] is False and scope["RUN_DEMO"] is True
  assert urls and urls[0][0].endswith("ViT-B_16.npz") and urls[0][1] <= 10
  scope = _run_flag_cell(monkeypatch, lambda request, timeout: contextlib.nullcontext())
  assert scope["ONLINE"] is True and scope["RUN_DEMO"] is False


_DISTRIBUTION = importlib.metadata.distribution


def _run_install_cells(monkeypatch, cwd, *, repo: str | None = None, ref: str | None = None,
                       installed: bool = True) -> tuple[dict, list[list[str]]]:
  """Runs the settings and install cells in `cwd`; git and pip calls are recorded only."""
  import subprocess
  nb = nbformat.read(NOTEBOOK, as_version=4)
  sources = _code_cells(nb)
  settings = next(s for s in sources if "REPO = " in s)
  install = next(s for s in sources if "def get_checkout" in s)
  calls: list[list[str]] = []

  def run(cmd, check):
    calls.append(list(cmd))
    if cmd[:2] == ["git", "clone"]:  # what a clone leaves: a checkout at the destination
      dest = pathlib.Path(cmd[-1])
      (dest / "heat_jax").mkdir(parents=True)
      (dest / "heat_jax" / "__init__.py").write_text("")
      (dest / "pyproject.toml").write_text("")

  def not_installed(name):
    raise importlib.metadata.PackageNotFoundError(name)

  monkeypatch.setattr(subprocess, "run", run)
  monkeypatch.setattr(importlib.metadata, "distribution",
                      _DISTRIBUTION if installed else not_installed)
  for name, value in (("HEAT_JAX_REPO", repo), ("HEAT_JAX_REF", ref)):
    if value is None:
      monkeypatch.delenv(name, raising=False)
    else:
      monkeypatch.setenv(name, value)
  monkeypatch.setattr(sys, "path", list(sys.path))  # the cell prepends the checkout
  monkeypatch.chdir(cwd)                            # the cell changes into it
  scope: dict = {}
  exec(compile(settings, "settings cell", "exec"), scope)
  exec(compile(install, "install cell", "exec"), scope)
  return scope, calls


def test_install_cell_uses_the_checkout_it_is_opened_from(monkeypatch):
  scope, calls = _run_install_cells(monkeypatch, ROOT / "notebooks",
                                    repo="https://example.invalid/unused")
  assert scope["ROOT"] == ROOT and calls == []
  assert os.getcwd() == str(ROOT)
  scope, calls = _run_install_cells(monkeypatch, ROOT / "notebooks", installed=False)
  assert scope["ROOT"] == ROOT
  assert calls == [[sys.executable, "-m", "pip", "install", "-q", "-e", str(ROOT)]]


def test_install_cell_outside_a_checkout_uses_repo(tmp_path, monkeypatch):
  elsewhere = tmp_path / "content"
  elsewhere.mkdir()
  # A local path: used as it is, nothing cloned.
  scope, calls = _run_install_cells(monkeypatch, elsewhere, repo=str(ROOT))
  assert scope["ROOT"] == ROOT and calls == []
  # A git URL (and a branch): cloned into ./heat_jax, then installed.
  url = "https://example.invalid/someone/heat_jax.git"
  scope, calls = _run_install_cells(monkeypatch, elsewhere, repo=url, ref="dev",
                                    installed=False)
  dest = elsewhere / "heat_jax"
  assert scope["ROOT"] == dest
  assert calls == [["git", "clone", "--depth", "1", "--branch", "dev", url, str(dest)],
                   [sys.executable, "-m", "pip", "install", "-q", "-e", str(dest)]]
  # Run again: the clone is reused.
  scope, calls = _run_install_cells(monkeypatch, elsewhere, repo=url)
  assert scope["ROOT"] == dest and calls == []


def test_install_cell_asks_for_repo_when_it_is_unset(tmp_path, monkeypatch):
  with pytest.raises(RuntimeError, match="set REPO in the first code cell"):
    _run_install_cells(monkeypatch, tmp_path)
  not_a_checkout = tmp_path / "empty"
  not_a_checkout.mkdir()
  with pytest.raises(RuntimeError, match="is not a heat_jax checkout"):
    _run_install_cells(monkeypatch, tmp_path, repo=str(not_a_checkout))
