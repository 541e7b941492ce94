"""Training engine internals: split-head kernels, cost that follows the selection,
gradient accumulation, fused attention."""

import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from heat_jax import checkpoints, experiment
from heat_jax.errors import ConfigError
from heat_jax.methods.heat import head_weight_mask
from heat_jax.models import create_model
from heat_jax.models.head_split import HeadSplit
from heat_jax.models.layers import MultiHeadAttention, Projection
from heat_jax.models.swin import shift_window_mask
from heat_jax.training import partition
from heat_jax.training.trainer import Trainer
from heat_jax.training.metrics import read_metric


def _optim(**kw):
  base = dict(lr=1e-2, weight_decay=1e-4, wd_mask="all", clip_norm=0.0, warmup_epochs=0,
              warmup_init_lr=0.0, min_lr=0.0, b1=0.9, b2=0.999)
  return ml_collections.ConfigDict({**base, **kw})


def _params(model, seed=0):
  params = checkpoints.init_params(model, rng=jax.random.key(seed))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda p: np.asarray(p) + 0.05 * rng.standard_normal(p.shape)
                      .astype(np.float32), params)


def _batches(n, batch=8, size=32, classes=4, seed=0):
  rng = np.random.default_rng(seed)
  return [{"image": rng.standard_normal((batch, size, size, 3)).astype(np.float32),
           "label": rng.integers(0, classes, batch).astype(np.int32),
           "mask": np.ones(batch, np.float32)} for _ in range(n)]


def _heat_mask(params, selected):
  head = partition.mask_from_predicate(params, lambda k, _: partition.is_head(k))
  return partition.union(head_weight_mask(params, selected), head)


def _comparable(key):
  """False for the key bias: it adds a per-query constant to the logits, which softmax
  ignores, so its gradient is rounding noise that Adam scales up to whole steps of
  either sign; two exact computations of the same step disagree there."""
  return not key.endswith("key/bias")


def _run(trainer, batches):
  state = trainer.initial_state()
  losses = []
  for b in batches:
    state, metrics = trainer.train_step(state, b)
    losses.append(float(metrics["loss"]))
  return state, losses


# ----------------------------------------------------------------------------- projection


@pytest.mark.parametrize("features,num_in,axis", [((3, 4), 1, -1), ((12,), 2, (-2, -1))])
def test_projection_matches_dense_general(features, num_in, axis):
  """Same parameter names, shapes, initial values and outputs as nn.DenseGeneral."""
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 5, 12)).astype(np.float32))
  if num_in == 2:
    x = x.reshape(2, 5, 3, 4)
  init = nn.initializers.xavier_uniform()
  ours = Projection(features, num_in=num_in, kernel_init=init)
  ref = nn.DenseGeneral(features, axis=axis, kernel_init=init)
  p_ours = ours.init(jax.random.key(3), x)
  p_ref = ref.init(jax.random.key(3), x)
  assert jax.tree.map(np.shape, p_ours) == jax.tree.map(np.shape, p_ref)
  for a, b in zip(jax.tree.leaves(p_ours), jax.tree.leaves(p_ref)):
    np.testing.assert_array_equal(a, b)
  p_ref = jax.tree.map(lambda v: v + 0.1, p_ref)  # non-zero bias
  np.testing.assert_allclose(ours.apply(p_ref, x), ref.apply(p_ref, x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["qkv", "out"])
def test_split_kernel_equals_whole_kernel(name):
  """A HeadSplit kernel gives the whole kernel's output and the gradient of its slices."""
  rng = np.random.default_rng(1)
  heads, hd, d = 4, 3, 12
  idx = (1, 2)
  if name == "qkv":
    module, axis = Projection((heads, hd), num_in=1, head_axis=1), 1
    x = rng.standard_normal((2, 5, d)).astype(np.float32)
    kernel = rng.standard_normal((d, heads, hd)).astype(np.float32)
    bias = rng.standard_normal((heads, hd)).astype(np.float32)
  else:
    module, axis = Projection((d,), num_in=2, head_axis=0), 0
    x = rng.standard_normal((2, 5, heads, hd)).astype(np.float32)
    kernel = rng.standard_normal((heads, hd, d)).astype(np.float32)
    bias = rng.standard_normal((d,)).astype(np.float32)
  part = np.take(kernel, idx, axis)
  stale = kernel.copy()
  np.put_along_axis(stale, np.reshape(idx, [-1 if a == axis else 1 for a in range(3)]),
                    99.0, axis)  # the split form must never read the selected slices of `full`

  def split_loss(part):
    y = module.apply({"params": {"kernel": HeadSplit(jnp.asarray(stale), part, idx, axis),
                                 "bias": bias}}, x)
    return jnp.sum(jnp.sin(y)), y

  def whole_loss(kernel):
    y = module.apply({"params": {"kernel": kernel, "bias": bias}}, x)
    return jnp.sum(jnp.sin(y)), y

  (_, y_split), g_split = jax.value_and_grad(split_loss, has_aux=True)(jnp.asarray(part))
  (_, y_whole), g_whole = jax.value_and_grad(whole_loss, has_aux=True)(jnp.asarray(kernel))
  np.testing.assert_allclose(y_split, y_whole, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(g_split, np.take(g_whole, idx, axis), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", ["grouped", "grouped_gate_swin_bias", "mixed_heads"])
def test_attention_with_split_heads_equals_whole_kernels(case, monkeypatch):
  """Attention with HeadSplit kernels (grouped per head set, or interleaved when the
  projections' head sets differ) equals the whole-kernel attention, and the trained
  slices get the whole kernels' gradient slices."""
  heads, hd = 4, 3
  rng = np.random.default_rng(7)
  gate = bias = None
  if case == "grouped_gate_swin_bias":
    x = _attention_inputs((2, 4), 4, heads, hd)
    bias = jnp.asarray(rng.standard_normal((heads, 4, 4)).astype(np.float32)[None]
                       + shift_window_mask(4, 4, (2, 2), (1, 1))[:, None])
    gate = jnp.asarray([1.0, 0.0, 0.5, 2.0])
  else:
    x = _attention_inputs((2,), 5, heads, hd)
  module = MultiHeadAttention(num_heads=heads)
  params = jax.tree.map(lambda p: p + 0.1 * rng.standard_normal(p.shape).astype(np.float32),
                        module.init(jax.random.key(0), x))["params"]
  idx = {n: (1, 2) for n in ("query", "key", "value", "out")}
  if case == "mixed_heads":
    idx["out"] = (0, 2)
  axes = {"query": 1, "key": 1, "value": 1, "out": 0}
  parts = {n: jnp.take(params[n]["kernel"], jnp.asarray(idx[n]), axis=axes[n]) for n in idx}
  calls = []
  original = MultiHeadAttention._attend
  monkeypatch.setattr(MultiHeadAttention, "_attend",
                      lambda self, *a: calls.append(1) or original(self, *a))

  def split_loss(parts):
    tree = {n: dict(v) for n, v in params.items()}
    for n, part in parts.items():
      tree[n]["kernel"] = HeadSplit(params[n]["kernel"], part, idx[n], axes[n])
    y = module.apply({"params": tree}, x, gate=gate, attention_bias=bias)
    return jnp.sum(jnp.sin(y)), y

  def whole_loss(params):
    y = module.apply({"params": params}, x, gate=gate, attention_bias=bias)
    return jnp.sum(jnp.sin(y)), y

  (_, y_split), g_split = jax.value_and_grad(split_loss, has_aux=True)(parts)
  assert len(calls) == (1 if case == "mixed_heads" else 2)  # one attention per head group
  (_, y_whole), g_whole = jax.value_and_grad(whole_loss, has_aux=True)(params)
  np.testing.assert_allclose(y_split, y_whole, rtol=1e-5, atol=1e-5)
  for n in idx:
    want = np.take(g_whole[n]["kernel"], idx[n], axis=axes[n])
    np.testing.assert_allclose(g_split[n], want, rtol=1e-4, atol=1e-5, err_msg=n)


def test_slices_of_detects_one_axis_masks():
  sel = np.array([True, False, True])
  assert partition.slices_of(sel[None, :, None], (4, 3, 2)) == partition.Slices(1, (0, 2))
  assert partition.slices_of(sel[:, None], (3, 2)) == partition.Slices(0, (0, 2))
  full = np.broadcast_to(sel[None, :, None], (4, 3, 2))
  assert partition.slices_of(full, (4, 3, 2)) == partition.Slices(1, (0, 2))
  checker = np.indices((3, 2)).sum(0) % 2 == 0
  assert partition.slices_of(checker, (3, 2)) is None
  assert partition.slices_of(np.ones((1, 3, 1), bool), (4, 3, 2)) is None  # whole leaf


# ----------------------------------------------------------------------------- cost


def test_heat_state_holds_only_the_selected_heads():
  """Trainable arrays and Adam moments scale with the selected heads, not the layers."""
  model = create_model("ViT-micro", 4, num_heads=4)
  params = _params(model)
  selected = np.zeros((2, 4), bool)
  selected[0, 1] = selected[1, 2] = True
  mask = _heat_mask(params, selected)
  trainer = Trainer(model, params, mask, _optim(), total_steps=4, steps_per_epoch=2)
  state = trainer.initial_state()
  n_trainable = partition.count(params, mask)
  d, hd, classes = 32, 8, 4
  assert n_trainable == 2 * (3 * (d * hd + hd) + hd * d) + d * classes + classes
  assert sum(x.size for x in jax.tree.leaves(state["params"])) == n_trainable
  moments = [x for x in jax.tree.leaves(state["opt_state"])
             if jnp.issubdtype(x.dtype, jnp.floating)]
  assert sum(x.size for x in moments) == 2 * n_trainable
  kernel = state["params"]["Transformer"]["encoderblock_0"]["MultiHeadDotProductAttention_0"]
  assert kernel["query"]["kernel"].shape == (d, 1, hd)
  assert kernel["out"]["kernel"].shape == (1, hd, d)


def _step_flops(model, params, mask):
  trainer = Trainer(model, params, mask, _optim(), total_steps=4, steps_per_epoch=2)
  state = trainer.initial_state()
  batch = trainer.put_batch(_batches(1)[0])
  cost = trainer._train_step.lower(state, trainer.frozen, batch).compile().cost_analysis()
  return float((cost[0] if isinstance(cost, list) else cost)["flops"])


def test_one_head_step_skips_the_other_heads_weight_gradients():
  """Compiled FLOPs: one of 4 heads per layer saves ~3/4 of the q/k/v/out weight
  gradients compared with all heads (both need the same activation backprop)."""
  model = create_model("ViT-micro", 4, num_heads=4)
  params = _params(model)
  layers, heads, d, tokens, batch = 2, 4, 32, 17, 8
  all_heads = _step_flops(model, params, _heat_mask(params, np.ones((layers, heads), bool)))
  one = np.zeros((layers, heads), bool)
  one[:, 2] = True
  one_head = _step_flops(model, params, _heat_mask(params, one))
  # Weight gradient of one projection: 2 * rows * d_in * d_out multiply-adds.
  per_layer = 4 * 2 * batch * tokens * d * d
  saved = layers * per_layer * (heads - 1) / heads
  assert all_heads - one_head >= 0.9 * saved, (all_heads, one_head, saved)


def test_full_step_does_not_copy_donated_parameters():
  """The donated parameters are updated in place: no per-step copy of them (XLA:CPU
  inserts one per kernel that the backward pass reads unless told otherwise)."""
  model = create_model("ViT-micro", 4)
  params = _params(model)
  trainer = Trainer(model, params, {k: True for k in partition.flatten(params)}, _optim(),
                    total_steps=4, steps_per_epoch=2)
  state = trainer.initial_state()
  batch = trainer.put_batch(_batches(1)[0])
  text = trainer._train_step.lower(state, trainer.frozen, batch).compile().as_text()
  entry = text.split("\nENTRY")[1]
  copies = [l for l in entry.splitlines() if " copy(" in l and "state__params" in l]
  assert not copies, copies[:3]


# ----------------------------------------------------------------------------- equivalence


def test_sliced_training_equals_element_masked_training(monkeypatch):
  """The split-head path trains exactly what the where-masked whole-leaf path trains."""
  model = create_model("ViT-micro", 4, num_heads=4)
  params = _params(model, seed=2)
  selected = np.array([[True, False, False, True], [False, True, False, False]])
  mask = _heat_mask(params, selected)
  batches = _batches(3, seed=2)
  sliced = Trainer(model, params, mask, _optim(), total_steps=3, steps_per_epoch=3)
  assert len(sliced.partition.slices) == 2 * 7 and not sliced.partition.masked
  state, loss_sliced = _run(sliced, batches)
  after_sliced = partition.flatten(sliced.full_params(state))
  monkeypatch.setattr(partition, "slices_of", lambda m, shape: None)
  masked = Trainer(model, params, mask, _optim(), total_steps=3, steps_per_epoch=3)
  assert not masked.partition.slices and len(masked.partition.masked) == 2 * 7
  state, loss_masked = _run(masked, batches)
  after_masked = partition.flatten(masked.full_params(state))
  np.testing.assert_allclose(loss_sliced, loss_masked, rtol=1e-5)
  before = partition.flatten(params)
  for k in before:
    if _comparable(k):
      np.testing.assert_allclose(after_sliced[k], after_masked[k], rtol=1e-4, atol=1e-6,
                                 err_msg=k)
    if not any(np.asarray(mask[k]).reshape(-1)):
      assert np.array_equal(after_sliced[k], before[k]), k


def test_other_element_masks_fall_back_to_masked_leaves():
  """A mask that does not select along one axis trains its whole leaf under `where`."""
  model = create_model("ViT-micro", 4)
  params = _params(model)
  key = "Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel"
  shape = np.shape(partition.flatten(params)[key])
  checker = np.indices(shape).sum(0) % 2 == 0
  mask = {k: partition.is_head(k) for k in partition.flatten(params)}
  mask[key] = checker
  trainer = Trainer(model, params, mask, _optim(), total_steps=3, steps_per_epoch=3)
  assert key in trainer.partition.masked and not trainer.partition.slices
  state, _ = _run(trainer, _batches(3))
  before = partition.flatten(params)[key]
  after = partition.flatten(trainer.full_params(state))[key]
  assert np.array_equal(after[~checker], before[~checker])
  assert not np.array_equal(after[checker], before[checker])


@pytest.mark.parametrize("method", ["full", "heat"])
def test_accumulated_step_equals_one_batch_step(method):
  """k micro-batches give the one-batch gradient and loss (model without batch
  statistics; with BatchNorm the statistics would come from each micro-batch)."""
  model = create_model("ViT-micro", 4, num_heads=4)
  params = _params(model, seed=4)
  if method == "full":
    mask = {k: True for k in partition.flatten(params)}
  else:
    mask = _heat_mask(params, np.array([[True, False, True, False], [False] * 3 + [True]]))
  batches = _batches(2, batch=8, seed=4)
  batches[1]["mask"][-3:] = 0.0  # padded rows: micro-batches are weighted by their rows
  trainers = {k: Trainer(model, params, mask, _optim(), total_steps=3, steps_per_epoch=3,
                         accum_steps=k) for k in (1, 4)}
  state = trainers[1].initial_state()
  batch = trainers[1].put_batch(batches[1])
  args = (state["params"], trainers[1].frozen, state["model_state"], batch, jax.random.key(0))
  loss1, _, grads1 = jax.jit(trainers[1]._gradients)(*args)
  loss4, _, grads4 = jax.jit(trainers[4]._accumulated)(*args)
  np.testing.assert_allclose(loss4, loss1, rtol=1e-6)
  scale = max(float(np.max(np.abs(g))) for g in jax.tree.leaves(grads1))
  for (path, g1), g4 in zip(jax.tree_util.tree_leaves_with_path(grads1),
                            jax.tree.leaves(grads4)):
    np.testing.assert_allclose(g4, g1, rtol=1e-4, atol=1e-6 * scale, err_msg=str(path))
  if method == "heat":  # whole steps (sliced heads, optimizer): the same losses
    losses = {k: _run(t, batches)[1] for k, t in trainers.items()}
    np.testing.assert_allclose(losses[4], losses[1], rtol=1e-5)


def test_heat_resume_from_compact_state_is_bit_identical(tiny_config, tmp_path, interrupted_run,
                                                         caplog):
  """The orbax checkpoint holds the compact (selected-slices) state and resumes exactly."""
  c = tiny_config
  c.method.name = "heat"
  c.train.epochs = 2
  c.train.checkpoint_every_steps = 4
  experiment.run(c, str(tmp_path / "a"), quiet=True)
  interrupted_run(c, str(tmp_path / "b"), at_step=6)
  caplog.set_level(logging.INFO, logger="absl")
  experiment.run(c, str(tmp_path / "b"))
  assert "resumed from step 4" in caplog.text
  a = np.load(tmp_path / "a" / "adapter.npz", allow_pickle=False)
  b = np.load(tmp_path / "b" / "adapter.npz", allow_pickle=False)
  assert a.files == b.files
  for k in a.files:
    assert np.array_equal(a[k], b[k]), k


def test_accum_steps_must_divide_the_batch(tiny_config):
  tiny_config.train.accum_steps = 3
  with pytest.raises(ConfigError, match="accum_steps=3"):
    experiment.validate(tiny_config)


def _attention_inputs(lead, tokens, heads, hd, seed=0):
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.standard_normal(lead + (tokens, heads * hd)).astype(np.float32))


@pytest.mark.parametrize("case", ["plain", "gate", "swin_bias_and_mask"])
def test_fused_attention_equals_explicit_form(case):
  heads, hd = 3, 4
  gate = bias = None
  if case == "swin_bias_and_mask":
    win, n = (2, 2), 4
    x = _attention_inputs((2, 4), n, heads, hd)       # [B, windows, N, C]
    table = np.random.default_rng(5).standard_normal((heads, n, n)).astype(np.float32)
    bias = jnp.asarray(table[None] + shift_window_mask(4, 4, win, (1, 1))[:, None])
  else:
    x = _attention_inputs((2,), 7, heads, hd)
    if case == "gate":
      gate = jnp.asarray([1.0, 0.0, 0.5])
  fused = MultiHeadAttention(num_heads=heads, fused=True)
  explicit = MultiHeadAttention(num_heads=heads, fused=False)
  params = fused.init(jax.random.key(0), x)
  params = jax.tree.map(lambda p: p + 0.05, params)

  def loss(module, params, x):
    y = module.apply(params, x, gate=gate, attention_bias=bias)
    return jnp.sum(jnp.sin(y)), y

  (_, y_f), g_f = jax.value_and_grad(lambda p, x: loss(fused, p, x), (0, 1), has_aux=True)(
      params, x)
  (_, y_e), g_e = jax.value_and_grad(lambda p, x: loss(explicit, p, x), (0, 1),
                                     has_aux=True)(params, x)
  np.testing.assert_allclose(y_f, y_e, rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree.leaves(g_f), jax.tree.leaves(g_e)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_bf16_heat_trains_with_float32_master_weights(tiny_config, tmp_path):
  """bf16 compute end to end: split-head kernels, f32 state and artifacts, loss falls."""
  c = tiny_config
  c.method.name = "heat"
  c.train.bf16 = True
  c.train.epochs = 6
  c.optim.lr = 1e-2
  c.data.num_train = 96
  c.train.batch_size = 32
  c.train.log_every_steps = 1
  method = experiment.validate(c)
  p = experiment.prepare(c, str(tmp_path), method, "fp", log=lambda *_: None)
  assert p.model.dtype == jnp.bfloat16
  assert p.trainer.partition.split_keys
  state, _, _ = experiment.train(p, log=lambda *_: None)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state["params"]))
  loss = read_metric(tmp_path, "train/loss")
  assert np.all(np.isfinite(loss)) and np.mean(loss[-3:]) < 0.9 * np.mean(loss[:3]), loss
  p.ckpt.close()
