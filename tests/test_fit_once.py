"""A method decides once, before the one model build; a resumed run never decides again;
`config.evals` chooses what is measured."""

import ml_collections
import pytest

from heat_jax import experiment, importance, loop
from heat_jax.errors import CheckpointError


def _counting(monkeypatch, module, name, counts):
  original = getattr(module, name)
  counts[name] = 0

  def counted(*args, **kwargs):
    if name != "select_heads" or (args[0] != 1).any():   # not validate's dry run on ones
      counts[name] += 1
    return original(*args, **kwargs)
  monkeypatch.setattr(module, name, counted)


def _counts(monkeypatch) -> dict:
  counts: dict = {}
  _counting(monkeypatch, experiment, "build_model", counts)
  _counting(monkeypatch, importance, "compute_tis", counts)
  _counting(monkeypatch, importance, "select_heads", counts)
  return counts


def test_heat_builds_once_selects_once_and_not_on_resume(tiny_config, tmp_path, monkeypatch,
                                                         interrupted_run):
  c = tiny_config
  c.method.name = "heat"
  c.train.checkpoint_every_steps = 2
  counts = _counts(monkeypatch)
  interrupted_run(c, str(tmp_path), at_step=4)       # checkpoint at step 2, then Ctrl-C
  assert counts == {"build_model": 1, "compute_tis": 1, "select_heads": 1}
  counts = _counts(monkeypatch)
  results = experiment.run(c, str(tmp_path), quiet=True)
  assert counts == {"build_model": 1, "compute_tis": 0, "select_heads": 0}
  assert results["method_info"]["selection_restored"] is True
  assert results["method_info"]["heads_selected"] == 3


def test_resume_without_method_state_is_refused_in_one_line(tiny_config, tmp_path,
                                                            monkeypatch, interrupted_run):
  c = tiny_config
  c.method.name = "linear"
  c.train.checkpoint_every_steps = 2
  original = loop.checkpoint_meta
  with monkeypatch.context() as m:     # a checkpoint as an older heat_jax wrote it
    m.setattr(loop, "checkpoint_meta", lambda *a: {
        k: v for k, v in original(*a).items() if k != "method_state"})
    interrupted_run(c, str(tmp_path), at_step=4)
  with pytest.raises(CheckpointError) as info:
    experiment.run(c, str(tmp_path), quiet=True)
  assert "\n" not in info.value.one_line() and "resume=False" in info.value.one_line()


def test_config_evals_choose_metrics_and_epochs(tiny_config, tmp_path):
  c = tiny_config
  c.method.name = "linear"
  c.train.epochs = 4                                  # 4 steps per epoch
  c.evals = ml_collections.ConfigDict(
      {"test": {"split": "test", "metrics": "top1,loss", "every_epochs": 3},
       "fit": {"split": "train", "metrics": "top1", "every_epochs": 2}})
  results = experiment.run(c, str(tmp_path), quiet=True)
  got = [(r["epoch"], sorted(k for k in r if k not in ("epoch", "step")))
         for r in results["history"]]
  assert got == [(2, ["fit_top1"]), (3, ["test_loss", "test_top1"]),
                 (4, ["fit_top1", "test_loss", "test_top1"])]
  assert results["history"][-1]["test_loss"] > 0


def test_bad_evals_fail_validation(tiny_config):
  from heat_jax.errors import ConfigError
  c = tiny_config
  c.evals.val.metrics = "miou"
  with pytest.raises(ConfigError, match="config.evals.val.metrics"):
    experiment.validate(c)
  c.evals.val.metrics = "top1"
  c.evals.test.metrics = "loss"
  with pytest.raises(ConfigError, match="test with metric top1"):
    experiment.validate(c)
