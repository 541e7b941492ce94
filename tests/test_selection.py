"""Head selection (budgets, scopes, orders) and the saved importance files and map."""

import json

import matplotlib.image
import numpy as np
import pytest

from heat_jax.errors import ConfigError
from heat_jax.importance import (heads_to_keep, load_importance, plot_importance,
                                 save_importance, select_heads)
from heat_jax.models import HeadLayout

SWIN_B = HeadLayout((4, 4, 8, 8) + (16,) * 18 + (32, 32))  # Swin-B heads per block


def _scores(shape, seed=0):
  return np.random.default_rng(seed).random(shape)


def _top_order(scores, valid):
  """Independent ranking: sort (-score, layer, head) tuples with Python's sort."""
  return sorted(zip(*np.nonzero(valid)), key=lambda lh: (-scores[lh], lh[0], lh[1]))


def _mask(shape, heads):
  m = np.zeros(shape, bool)
  for lh in heads:
    m[lh] = True
  return m


@pytest.mark.parametrize("budget,expected", [(5, 5), (0.25, 12), (0.5, 24), (47, 47),
                                             (0.01, 1)])
def test_global_counts_and_top_heads(budget, expected):
  scores = _scores((4, 12))
  sel = select_heads(scores, budget)
  assert sel.sum() == expected
  assert np.array_equal(sel, _mask(scores.shape, _top_order(scores, np.ones((4, 12), bool))[
      :expected]))


def test_layer_scope_counts_per_layer():
  scores = _scores((4, 12))
  sel = select_heads(scores, 3, scope="layer")
  assert np.all(sel.sum(axis=1) == 3)
  for l in range(4):
    assert set(np.nonzero(sel[l])[0]) == set(np.argsort(-scores[l])[:3])
  assert np.array_equal(select_heads(scores, 0.25, scope="layer"), sel)  # 0.25 x 12 = 3


def test_layer_fraction_on_ragged_swin_layout():
  valid = SWIN_B.valid
  scores = _scores(SWIN_B.shape)
  scores[~valid] = 1e9  # absent heads must never be chosen, whatever their score
  heads = np.array(SWIN_B.heads_per_layer)
  sel = select_heads(scores, 0.5, scope="layer", valid=valid)
  assert not np.any(sel & ~valid)
  assert np.array_equal(sel.sum(axis=1), heads // 2)
  # Rounded half up, at least one head per layer: 0.1 x (4, 8, 16, 32) -> 1, 1, 2, 3.
  sel = select_heads(scores, 0.1, scope="layer", valid=valid)
  assert np.array_equal(sel.sum(axis=1), np.select(
      [heads == 4, heads == 8, heads == 16], [1, 1, 2], 3))
  sel = select_heads(scores, 0.3, valid=valid)
  assert sel.sum() == round(0.3 * SWIN_B.total_heads) and not np.any(sel & ~valid)
  for select in ("bottom", "random"):
    assert not np.any(select_heads(scores, 0.9, valid=valid, select=select) & ~valid)
  with pytest.raises(ConfigError, match="layer 0"):
    select_heads(scores, 5, scope="layer", valid=valid)  # stage 1 has 4 heads


def test_deactivate_is_the_number_of_heads_not_adapted():
  scores = _scores((12, 12))
  assert np.array_equal(select_heads(scores, deactivate=100), select_heads(scores, 44))
  assert np.array_equal(select_heads(scores, 0.5, deactivate=100), select_heads(scores, 44))
  assert np.array_equal(select_heads(scores, 5, deactivate=-1), select_heads(scores, 5))
  assert select_heads(scores, deactivate=0).all()
  sel = select_heads(scores, scope="layer", deactivate=4)
  assert np.all(sel.sum(axis=1) == 8)
  assert np.array_equal(sel, select_heads(scores, 8, scope="layer"))
  assert select_heads(scores, deactivate=0.75).sum() == 36
  assert heads_to_keep(4, deactivate=0.9) == 1  # a fraction always leaves one head
  with pytest.raises(ConfigError, match="no head"):
    select_heads(scores, deactivate=144)
  with pytest.raises(ConfigError, match="no head"):
    select_heads(scores, scope="layer", deactivate=12)


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_bottom_is_the_reverse_order_of_top(scope):
  scores = np.round(_scores((6, 4), seed=3), 1)  # many ties
  n = 24 if scope == "global" else 4
  for k in range(1, n):
    top = select_heads(scores, n - k, scope=scope)
    bottom = select_heads(scores, k, scope=scope, select="bottom")
    assert np.array_equal(bottom, ~top), k
  bottom = select_heads(scores, 3, select="bottom")
  assert np.array_equal(bottom, _mask(scores.shape, _top_order(scores, scores > -1)[-3:]))


def test_ties_are_broken_by_layer_then_head():
  scores = np.zeros((3, 4))
  scores[2, 1] = scores[0, 3] = 1.0
  assert np.array_equal(np.nonzero(select_heads(scores, 1)), ([0], [3]))
  sel = select_heads(scores, 4)
  assert np.array_equal(np.argwhere(sel), [[0, 0], [0, 1], [0, 3], [2, 1]])
  assert np.array_equal(select_heads(scores, 4), select_heads(scores.copy(), 4))


def test_random_is_reproducible_by_seed():
  scores = _scores((12, 12))
  a = select_heads(scores, 20, select="random", seed=1)
  assert a.sum() == 20
  assert np.array_equal(a, select_heads(scores, 20, select="random", seed=1))
  assert not np.array_equal(a, select_heads(scores, 20, select="random", seed=2))
  assert not np.array_equal(a, select_heads(scores, 20))
  per_layer = select_heads(scores, 2, scope="layer", select="random", seed=4)
  assert np.all(per_layer.sum(axis=1) == 2)
  assert np.array_equal(per_layer, select_heads(scores, 2, scope="layer", select="random",
                                                seed=4))


@pytest.mark.parametrize("kwargs", [
    dict(budget=0), dict(budget=-1), dict(budget=1.5), dict(budget=145), dict(budget=None),
    dict(budget=True), dict(budget=float("nan")), dict(budget=13, scope="layer"),
    dict(budget=2, scope="stage"), dict(budget=2, select="worst"),
    dict(deactivate=2.5)])
def test_impossible_budgets_raise_config_error(kwargs):
  with pytest.raises(ConfigError):
    select_heads(_scores((12, 12)), **kwargs)


def test_non_finite_scores_are_rejected():
  scores = _scores((2, 2))
  scores[0, 1] = np.nan
  with pytest.raises(ValueError, match="NaN"):
    select_heads(scores, 1)
  assert select_heads(scores, 1, select="random").sum() == 1


def test_save_and_plot(tmp_path):
  layout = HeadLayout((2, 2, 4))
  scores = _scores(layout.shape)
  scores[~layout.valid] = 0
  selected = select_heads(scores, 3, valid=layout.valid)
  paths = save_importance(tmp_path / "run", scores, selected, layout=layout,
                          meta={"strategy": "gate", "num_batches": 2})
  assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
      "heads.npy", "importance.json", "importance.npy"]  # no temporary files left
  s, h, info = load_importance(tmp_path / "run")
  assert np.array_equal(s, scores) and np.array_equal(h, selected) and h.dtype == bool
  assert info == json.loads(paths["json"].read_text())
  assert info["strategy"] == "gate" and info["num_selected"] == 3
  assert info["heads_per_layer"] == [2, 2, 4] and info["total_heads"] == 8
  for l, row in enumerate(info["layers"]):
    assert row["selected"] == list(np.nonzero(selected[l])[0])
    assert row["num_selected"] == selected[l].sum()
    np.testing.assert_allclose(row["scores"], scores[l, :layout.heads_per_layer[l]])
  ranks = {(l, h): r for l, row in enumerate(info["layers"]) for h, r in enumerate(row["rank"])}
  assert sorted(ranks.values()) == list(range(1, 9))
  assert {lh for lh, r in ranks.items() if r <= 3} == set(map(tuple, np.argwhere(selected)))
  with pytest.raises(ValueError, match="reserved"):
    save_importance(tmp_path, scores, selected, layout=layout, meta={"layers": 1})

  png = plot_importance(tmp_path / "map.png", scores, selected, valid=layout.valid,
                        title="TIS (gate)")
  image = matplotlib.image.imread(png)
  assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
  rgb = image[..., :3]
  red = (rgb[..., 0] > 0.9) & (rgb[..., 1] < 0.2) & (rgb[..., 2] < 0.2)
  grey = np.all(np.abs(rgb - 0.85) < 0.02, axis=-1)
  assert red.sum() > 50 and grey.sum() > 500  # selected boxes and absent-head cells
  plain = matplotlib.image.imread(plot_importance(tmp_path / "plain.png", scores))
  assert ((plain[..., 0] > 0.9) & (plain[..., 1] < 0.2)).sum() == 0  # nothing selected


@pytest.mark.parametrize("budget,expected", [(1, 1), (1.0, 48), (8.0, 8), (0.5, 24)])
def test_float_one_is_all_heads_and_int_one_is_one_head(budget, expected):
  assert select_heads(_scores((4, 12)), budget).sum() == expected
  assert heads_to_keep(48, budget) == expected


def test_deactivate_float_one_leaves_no_head():
  with pytest.raises(ConfigError, match="leaves no head"):
    heads_to_keep(48, deactivate=1.0)
  assert heads_to_keep(48, deactivate=1) == 47


def test_budget_flag_keeps_the_type_written(cli_run):
  """run.py: `--config.heat.budget=1.0` trains every head of ViT-micro (2 x 2), not one;
  configs/vtab.py-style args (`budget=1`) keep an int as an int."""
  work, _ = cli_run("--config=configs/smoke.py", "--config.heat.budget=1.0",
                    "--config.train.max_steps=1")
  heads = np.load(work / "heads.npy")
  assert heads.shape == (2, 2) and heads.all()
  results = json.loads((work / "results.json").read_text())
  assert results["config"]["heat"]["budget"] == 1.0
  from configs import vtab
  assert vtab.get_config("dtd,budget=1").heat.budget == 1
  assert isinstance(vtab.get_config("dtd,budget=1").heat.budget, int)
  assert isinstance(vtab.get_config("dtd,budget=1.0").heat.budget, float)
