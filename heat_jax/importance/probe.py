"""A linear probe on the frozen backbone: the classifier HEAT scores heads through.

TIS is first order in the loss, and every gradient into the backbone passes through
the classifier: a zero classifier makes every score 0 and a random one measures the
sensitivity to a random readout. The probe is the model's own `head` Dense fitted on
the task, with the backbone frozen:

  head_features(model, params, batches)  one eval-mode pass: the input of the `head`
      Dense for every real (mask = 1) row (ViT: the class token or the patch-token mean
      after the final LayerNorm, through `pre_logits` if any; Swin: the mean of the
      normed last feature map). Read with flax's method interceptor, so the models
      need no feature API.
  fit_probe(features, labels, num_classes)  multinomial logistic regression on the
      standardised features, minimising mean cross-entropy + l2 / 2 * ||kernel||^2 (the
      bias is not penalised) with full-batch L-BFGS (scipy) on the cached features; the
      standardisation is folded back into the returned kernel and bias.

Logistic, not a closed-form ridge fit of one-hot targets: TIS differentiates the
cross-entropy, and ridge logits live on the 0-1 scale of the targets, so their softmax is
near uniform and the loss gradient hardly depends on whether an example is classified
correctly; a ridge head is also a poor starting point for cross-entropy training.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Iterable, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

from heat_jax.errors import DataError
from heat_jax.models.apply import apply_model

HEAD = ("head",)   # scope path of the classifier Dense in both backbones


@dataclasses.dataclass
class Probe:
  """A fitted probe: the `head` Dense's kernel [features, classes] and bias [classes]."""

  kernel: np.ndarray
  bias: np.ndarray
  train_accuracy: float
  train_loss: float          # mean cross-entropy on the fitting data (no penalty)
  num_examples: int
  iterations: int
  seconds: float             # fit only (features excluded)
  feature_seconds: float = 0.0

  def info(self) -> dict[str, Any]:
    return {"train_accuracy": round(self.train_accuracy, 6),
            "train_loss": round(self.train_loss, 6), "examples": self.num_examples,
            "iterations": self.iterations, "fit_seconds": round(self.seconds, 3),
            "feature_seconds": round(self.feature_seconds, 3)}


def _feature_fn(model: nn.Module):
  @jax.jit
  def features(params, model_state, images):
    found = []

    def grab(next_fun, args, kwargs, context):
      if context.method_name == "__call__" and context.module.scope.path == HEAD:
        found.append(args[0])
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(grab):
      apply_model(model, params, model_state, images, train=False)
    if len(found) != 1:
      raise ValueError(f"expected one call of the model's 'head' Dense, saw {len(found)}")
    return found[0].astype(jnp.float32)

  return features


def head_features(model: nn.Module, params: Mapping[str, Any],
                  batches: Iterable[Mapping[str, Any]], *,
                  model_state: Optional[Mapping[str, Any]] = None
                  ) -> tuple[np.ndarray, np.ndarray]:
  """(features float32 [n, d], labels int [n]) of the real rows of `batches`."""
  features = _feature_fn(model)
  params = jax.device_put(params)
  model_state = jax.device_put(dict(model_state or {}))
  xs, ys = [], []
  for batch in batches:
    keep = (np.ones(len(batch["label"]), bool) if batch.get("mask") is None
            else np.asarray(batch["mask"]) > 0)
    if not keep.any():
      continue
    x = np.asarray(features(params, model_state, batch["image"]))
    xs.append(x[keep])
    ys.append(np.asarray(batch["label"])[keep])
  if not xs:
    raise DataError("the linear probe needs at least one training example")
  return np.concatenate(xs), np.concatenate(ys).astype(np.int32)


def _objective(w: np.ndarray, z: np.ndarray, onehot: np.ndarray,
               l2: float) -> tuple[float, np.ndarray]:
  """(mean CE + l2 / 2 * ||kernel||^2, its gradient); w = kernel [d, C] and bias [C], flat."""
  n, d = z.shape
  c = onehot.shape[1]
  kernel, bias = w[:d * c].reshape(d, c), w[d * c:]
  logits = z @ kernel + bias
  logits -= logits.max(axis=1, keepdims=True)
  logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
  value = -np.sum(onehot * logp) / n + 0.5 * l2 * np.sum(kernel ** 2)
  residual = (np.exp(logp) - onehot) / n
  grad = np.concatenate([(z.T @ residual + l2 * kernel).ravel(), residual.sum(axis=0)])
  return float(value), grad


def fit_probe(features: np.ndarray, labels: np.ndarray, num_classes: int, *,
              l2: float = 1e-3, max_steps: int = 500, tol: float = 1e-4) -> Probe:
  """Multinomial logistic regression on cached features (see the module docstring).

  Args:
    features: float [n, d]; labels: int [n] in [0, num_classes).
    l2: weight of `0.5 * ||kernel||^2` (kernel of the standardised features) added to
      the MEAN cross-entropy: sklearn's `LogisticRegression(C=1 / (l2 * n))` after a
      `StandardScaler`; keeps the probe from fitting the training data exactly, which
      would leave no gradient to score heads with.
    max_steps / tol: L-BFGS iterations, stopped once every gradient entry is <= tol.
  """
  x = np.asarray(features, np.float32)
  y = np.asarray(labels)
  if x.ndim != 2 or y.shape != (x.shape[0],) or len(y) == 0:
    raise ValueError(f"features [n, d] and labels [n] expected, got {x.shape} and {y.shape}")
  if y.min() < 0 or y.max() >= num_classes:
    raise DataError(f"probe labels must lie in [0, {num_classes}), got {y.min()}..{y.max()}")
  start = time.time()
  # Standardised features: the same optimum up to the penalty's scale, in far fewer
  # L-BFGS iterations (LayerNorm's learned scales leave the raw features ill-conditioned).
  x64 = x.astype(np.float64)
  mean, std = x64.mean(axis=0), x64.std(axis=0)
  std = np.where(std > 1e-6 * max(float(std.max()), 1e-30), std, 1.0)
  d, c = x.shape[1], num_classes
  z = (x64 - mean) / std
  onehot = np.eye(c)[y]
  # float64 numpy: no compilation, no per-call dispatch (which dominated a jitted
  # objective on a busy CPU), and a line search free of float32 rounding.
  result = scipy.optimize.minimize(_objective, np.zeros(d * c + c), args=(z, onehot, l2),
                                   jac=True, method="L-BFGS-B",
                                   options={"maxiter": int(max_steps), "gtol": float(tol)})
  w_std, b_std = result.x[:d * c].reshape(d, c), result.x[d * c:]
  kernel = (w_std / std[:, None]).astype(np.float32)     # folded back: raw features in
  bias = (b_std - (mean / std) @ w_std).astype(np.float32)
  steps = result.nit
  seconds = time.time() - start
  logits = x64 @ kernel + bias
  logp = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
  return Probe(kernel=kernel, bias=bias,
               train_accuracy=float(np.mean(logits.argmax(1) == y)),
               train_loss=float(-np.mean(logp[np.arange(len(y)), y])), num_examples=len(y),
               iterations=int(steps), seconds=seconds)


def fit_head_probe(model: nn.Module, params: Mapping[str, Any],
                   batches: Iterable[Mapping[str, Any]], *, l2: float = 1e-3,
                   model_state: Optional[Mapping[str, Any]] = None) -> Probe:
  """`fit_probe` on `head_features` of `batches` (one pass), sized for the model's head."""
  tic = time.time()
  features, labels = head_features(model, params, batches, model_state=model_state)
  feature_seconds = time.time() - tic
  head = params.get("head")
  if head is None or "kernel" not in head:
    raise ValueError("the parameters have no 'head' Dense classifier to fit a probe for")
  probe = fit_probe(features, labels, int(np.shape(head["kernel"])[-1]), l2=l2)
  probe.feature_seconds = feature_seconds
  return probe


def with_probe(params: Mapping[str, Any], probe: Probe) -> dict[str, Any]:
  """A copy of `params` whose classifier is the probe (in the classifier's dtypes)."""
  head = params.get("head")
  if head is None or "kernel" not in head:
    raise ValueError("the parameters have no 'head' Dense to put the probe into")
  kernel, bias = np.asarray(head["kernel"]), head.get("bias")
  if kernel.shape != probe.kernel.shape or bias is None:
    raise ValueError(f"the probe (kernel {probe.kernel.shape} and a bias) does not fit the "
                     f"classifier {jax.tree.map(np.shape, dict(head))}")
  return {**params, "head": {**head, "kernel": probe.kernel.astype(kernel.dtype),
                             "bias": probe.bias.astype(np.asarray(bias).dtype)}}
