"""Offline synthetic tasks: a small procedurally generated world in the spirit of VTAB.

Nothing is downloaded and nothing large is stored: every image is generated on the
fly from a seed with `numpy.random.default_rng`, so the same seed always gives
bit-identical data. Generators have the signature
`generator(rng, n, image_size) -> (uint8 images [n, S, S, 3], int64 labels [n])` and
draw class-balanced labels (every class appears n // k or n // k + 1 times).

Downstream tasks (`config.data.task`, class count, native resolution):
  * `sprite_x` (8, 32px): dSprites-like sprite (square / ellipse / heart, random scale,
    rotation, colour, y) on a dark noisy background; label = bin of the x coordinate
    of the sprite's area centroid over `SPRITE_RANGE`.
  * `sprite_orientation` (8, 32px): the same world restricted to hearts, the only
    dSprites shape whose rotation is not periodic below 360 degrees, so the label
    (45-degree bin of the rotation) is a function of the image. Rotation 0 is an
    upright heart (tip pointing down); angles grow clockwise on screen.
  * `count` (8, 48px): CLEVR-like scene of 3..10 shapes (square / circle / triangle /
    heart) whose bounding circles stay `COUNT_GAP` (2 px at 48px) apart, so they never
    touch; label = count - 3.
  * `texture` (12, 32px): (pattern, frequency) for pattern in stripes / checks / dots /
    band-pass noise and 3 frequencies; random angle, phase, sharpness and colours.
  * `digits` (10, 8px): the 1797 real 8x8 digits that ship with scikit-learn, split
    without overlap by a seeded, stratified permutation (so the test split holds at
    most 1797 - num_train images).

Pre-training tasks (not the downstream ones, for the demo's upstream model; 32px):
`shape_class` (5 SHAPES), `colour` (6 hue bins, `sprite_colour`), `sprite_y` (8 bins),
`size` (4 scale bins, `sprite_size`) and `texture_angle` (6 bins of stripe angle
modulo 180 degrees).
`pretraining_mixture` mixes them into one 29-way task with disjoint label ranges
(`PRETRAIN_OFFSETS`); each image carries a coloured frame that names its component,
so one softmax head can learn which label range applies (the label is a function of
the image). It is also available as the task `pretraining`.

Splits (like VTAB-1k): `train800` (num_train - num_val examples), `val200` (num_val)
and `test` (num_test) come from three independent rng streams
`default_rng([seed, crc32(task), stream])`, so they never share an image (`digits`:
consecutive slices of one seeded order).
`train_split='train800val200'` (the default) trains on train800 + val200 and still
reports val200 as `val` (then `info['val_in_train']` is True); `'train800'` trains on
train800 alone. Images are generated at the task's native resolution and resized
with `resize_uint8` when `image_size` differs.

`python -m heat_jax.data.synthetic --out examples.png` saves a grid of examples (absl flags,
`--help`).
"""

from __future__ import annotations

import functools
import os
import zlib
from typing import Any, Callable, Optional, Sequence

import numpy as np
from absl import flags

from heat_jax.data import register_source
from heat_jax.data.base import ArraySplit, Task
from heat_jax.data.preprocess import normalizer, resize_uint8
from heat_jax.errors import ConfigError
from heat_jax.io_utils import atomic_open

Generator = Callable[[np.random.Generator, int, int], tuple[np.ndarray, np.ndarray]]

# ------------------------------------------------------------------------------
# Shapes: implicit functions (inside where f <= 0) in object coordinates, with the
# image's y axis pointing down. Each is renormalised so that its area centroid is at
# the origin and its farthest point lies at distance 1 (the sprite "scale").
# ------------------------------------------------------------------------------

SHAPES = ("square", "ellipse", "heart", "circle", "triangle")
SQUARE, ELLIPSE, HEART, CIRCLE, TRIANGLE = range(len(SHAPES))
_TRIANGLE_NORMALS = np.array([[np.cos(a), np.sin(a)] for a in
                              np.deg2rad([90.0, 210.0, 330.0])])


def _raw_shape(sid: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  if sid == SQUARE:
    return np.maximum(np.abs(u), np.abs(v)) - 1.0
  if sid == ELLIPSE:
    return u * u + 4.0 * v * v - 1.0
  if sid == HEART:   # the classic heart curve, lobes up (v points down)
    uu, vv = u * u, v * v
    a = uu + vv - 1.0
    return a * a * a + uu * vv * v
  if sid == CIRCLE:
    return u * u + v * v - 1.0
  if sid == TRIANGLE:   # equilateral, tip up, inradius 0.5
    n = _TRIANGLE_NORMALS
    return np.maximum(np.maximum(u * n[0, 0] + v * n[0, 1], u * n[1, 0] + v * n[1, 1]),
                      u * n[2, 0] + v * n[2, 1]) - 0.5
  raise ValueError(f"unknown shape id {sid}")


@functools.lru_cache(maxsize=None)
def _shape_frame(sid: int) -> tuple[float, float, float]:
  """(centroid u, centroid v, max radius about the centroid) of a raw shape."""
  g = np.linspace(-1.6, 1.6, 641)
  u, v = np.meshgrid(g, g)
  inside = _raw_shape(sid, u, v) <= 0
  cu, cv = u[inside].mean(), v[inside].mean()
  radius = np.hypot(u[inside] - cu, v[inside] - cv).max() + (g[1] - g[0])
  return float(cu), float(cv), float(radius)


def _inside(sid: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  cu, cv, radius = (np.float32(t) for t in _shape_frame(sid))
  return _raw_shape(sid, u * radius + cu, v * radius + cv) <= 0


# ------------------------------------------------------------------------------
# Drawing helpers.
# ------------------------------------------------------------------------------


def hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Vectorised HSV (all in [0, 1]) -> RGB float [..., 3] in [0, 1]."""
  h = np.mod(h, 1.0) * 6.0
  k = np.stack([np.mod(5.0 + h, 6.0), np.mod(3.0 + h, 6.0), np.mod(1.0 + h, 6.0)], -1)
  return v[..., None] - (v * s)[..., None] * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def balanced_labels(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
  """A random order of n labels in which each of k classes appears n // k or n // k + 1 times."""
  counts = np.full(k, n // k)
  counts[rng.permutation(k)[:n % k]] += 1
  return rng.permutation(np.repeat(np.arange(k), counts))


def _bright_colours(rng: np.random.Generator, n: int, hue: Optional[np.ndarray] = None):
  hue = rng.uniform(0.0, 1.0, n) if hue is None else hue
  return hsv_to_rgb(hue, rng.uniform(0.5, 1.0, n), rng.uniform(0.75, 1.0, n))


def _dark_background(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
  """Dark random colour per image plus grey pixel noise: float32 [n, S, S, 3]."""
  base = hsv_to_rgb(rng.uniform(0, 1, n), rng.uniform(0, 1, n), rng.uniform(0.0, 0.15, n))
  noise = rng.standard_normal((n, size, size, 1), np.float32) * np.float32(0.02)
  return np.clip(base.astype(np.float32)[:, None, None, :] + noise, 0.0, 1.0)


def render_objects(canvas: np.ndarray, image_index: np.ndarray, shape: np.ndarray,
                   cx: np.ndarray, cy: np.ndarray, scale: np.ndarray, angle: np.ndarray,
                   colour: np.ndarray, *, supersample: int = 4,
                   chunk: int = 512) -> np.ndarray:
  """Draws M anti-aliased objects onto float canvases [n, S, S, 3] in [0, 1].

  Object m goes onto image `image_index[m]`; positions and `scale` (distance from the
  area centroid to the farthest point) are in units of the image width; `angle` is
  in radians, clockwise on screen. Objects must not overlap (their colours average).
  """
  n, size = canvas.shape[0], canvas.shape[1]
  indices, weights = [], []
  offsets = (np.arange(supersample) + 0.5) / supersample
  for start in range(0, len(shape), chunk):
    sl = slice(start, start + chunk)
    img, sid, x, y, sc = image_index[sl], shape[sl], cx[sl], cy[sl], scale[sl]
    m = len(sid)
    half = int(np.ceil(sc.max() * size)) + 1
    width = 2 * half + 1
    x0 = np.floor(x * size).astype(np.int64) - half
    y0 = np.floor(y * size).astype(np.int64) - half
    steps = (np.arange(width)[:, None] + offsets[None, :]).reshape(-1)
    dx = (((x0[:, None] + steps[None, :]) / size - x[:, None]) / sc[:, None]).astype(np.float32)
    dy = (((y0[:, None] + steps[None, :]) / size - y[:, None]) / sc[:, None]).astype(np.float32)
    c = np.cos(angle[sl]).astype(np.float32)[:, None, None]
    s = np.sin(angle[sl]).astype(np.float32)[:, None, None]
    u = c * dx[:, None, :] + s * dy[:, :, None]
    v = -s * dx[:, None, :] + c * dy[:, :, None]
    kinds = np.unique(sid)
    if len(kinds) == 1:
      inside = _inside(int(kinds[0]), u, v)
    else:
      inside = np.zeros(u.shape, bool)
      for k in kinds:
        sel = sid == k
        inside[sel] = _inside(int(k), u[sel], v[sel])
    hits = inside.reshape(m, width, supersample, width, supersample).sum(4, dtype=np.uint8)
    cover = hits.sum(2, dtype=np.uint8).astype(np.float32) / np.float32(supersample ** 2)
    rows = y0[:, None] + np.arange(width)[None, :]
    cols = x0[:, None] + np.arange(width)[None, :]
    keep = (((rows >= 0) & (rows < size))[:, :, None] & ((cols >= 0) & (cols < size))[:, None, :]
            & (cover > 0))
    flat = (img[:, None, None] * size + rows[:, :, None]) * size + cols[:, None, :]
    obj = np.broadcast_to(np.arange(start, start + m)[:, None, None], flat.shape)
    indices.append(np.stack([flat[keep], obj[keep]]))
    weights.append(cover[keep])
  if not indices:
    return canvas
  (index, obj), cover = np.concatenate(indices, 1), np.concatenate(weights)
  total = n * size * size
  alpha = np.bincount(index, cover, minlength=total)
  opacity = np.minimum(alpha, 1.0)
  out = canvas.reshape(total, 3) * (1.0 - opacity)[:, None]
  gain = opacity / np.maximum(alpha, 1e-8)
  for ch in range(3):
    out[:, ch] += np.bincount(index, cover * colour[obj, ch], minlength=total) * gain
  return out.reshape(canvas.shape).astype(np.float32)


def _to_uint8(images: np.ndarray) -> np.ndarray:
  return np.clip(np.rint(images * 255.0), 0, 255).astype(np.uint8)


def _sprites(rng: np.random.Generator, n: int, size: int, *, shapes: Sequence[int],
             scale: tuple[float, float] | np.ndarray, cx: Optional[np.ndarray] = None,
             cy: Optional[np.ndarray] = None, angle: Optional[np.ndarray] = None,
             hue: Optional[np.ndarray] = None,
             shape: Optional[np.ndarray] = None) -> np.ndarray:
  """One sprite per image on a dark background; unspecified factors are random."""
  shape = rng.choice(np.asarray(shapes), n) if shape is None else shape
  scale = rng.uniform(*scale, n) if isinstance(scale, tuple) else scale
  cx = rng.uniform(SPRITE_RANGE[0], SPRITE_RANGE[1], n) if cx is None else cx
  cy = rng.uniform(SPRITE_RANGE[0], SPRITE_RANGE[1], n) if cy is None else cy
  angle = rng.uniform(0.0, 2.0 * np.pi, n) if angle is None else angle
  colour = _bright_colours(rng, n, hue)
  canvas = _dark_background(rng, n, size)
  return _to_uint8(render_objects(canvas, np.arange(n), shape, cx, cy, scale, angle, colour))


def _bin_value(rng: np.random.Generator, labels: np.ndarray, num_bins: int, lo: float,
               hi: float, margin: float = 0.05) -> np.ndarray:
  """A value inside bin `label` of [lo, hi), kept `margin` (in bin widths) off its edges."""
  return lo + (labels + rng.uniform(margin, 1.0 - margin, len(labels))) * (hi - lo) / num_bins


# ------------------------------------------------------------------------------
# Downstream generators.
# ------------------------------------------------------------------------------

SPRITE_RANGE = (0.2, 0.8)        # range of sprite centroids; sprite scale <= 0.2
SPRITE_SCALE = (0.12, 0.2)
ORIENTATION_SCALE = (0.24, 0.34)
COUNT_RANGE = (3, 10)
COUNT_SCALE = (0.045, 0.075)
COUNT_GAP = 2.0 / 48            # minimum distance between the circumcircles of objects
TEXTURE_PATTERNS = ("stripes", "checks", "dots", "noise")
TEXTURE_FREQUENCIES = (2.0, 3.6, 6.5)   # cycles per image width, +-10% jitter


def sprite_x(rng: np.random.Generator, n: int, image_size: int):
  """dSprites-like sprite; label = x bin (8) of its area centroid over SPRITE_RANGE."""
  labels = balanced_labels(rng, n, 8)
  cx = _bin_value(rng, labels, 8, *SPRITE_RANGE)
  images = _sprites(rng, n, image_size, shapes=(SQUARE, ELLIPSE, HEART), scale=SPRITE_SCALE,
                    cx=cx)
  return images, labels


def sprite_orientation(rng: np.random.Generator, n: int, image_size: int):
  """A heart at a random place and size; label = 45-degree bin (8) of its rotation."""
  labels = balanced_labels(rng, n, 8)
  angle = _bin_value(rng, labels, 8, 0.0, 2.0 * np.pi)
  scale = rng.uniform(*ORIENTATION_SCALE, n)
  cx = rng.uniform(scale + 0.02, 0.98 - scale)
  cy = rng.uniform(scale + 0.02, 0.98 - scale)
  images = _sprites(rng, n, image_size, shapes=(HEART,), scale=scale, cx=cx, cy=cy,
                    angle=angle)
  return images, labels


def _place_disjoint(rng: np.random.Generator, radius: np.ndarray, number: np.ndarray,
                    gap: float, candidates: int = 32) -> tuple[np.ndarray, np.ndarray]:
  """Random non-overlapping centres for radius [n, K] (first number[i] used) in [0, 1]^2.

  Sequential placement with `candidates` tries per object, all images at once; images
  where an object finds no room are drawn again.
  """
  n, kmax = radius.shape
  pos = np.zeros((n, kmax, 2))
  todo = np.arange(n)
  while len(todo):
    r = radius[todo]
    p = np.zeros((len(todo), kmax, 2))
    ok = np.ones(len(todo), bool)
    for j in range(kmax):
      lo = r[:, j, None, None] + gap / 2
      cand = lo + rng.uniform(0.0, 1.0, (len(todo), candidates, 2)) * (1.0 - 2.0 * lo)
      valid = np.ones((len(todo), candidates), bool)
      if j:
        dist = np.linalg.norm(cand[:, :, None, :] - p[:, None, :j, :], axis=-1)
        valid = np.all(dist >= r[:, None, :j] + r[:, j, None, None] + gap, axis=-1)
      first = np.argmax(valid, axis=1)
      p[:, j] = cand[np.arange(len(todo)), first]
      ok &= valid.any(axis=1) | (j >= number[todo])
    pos[todo[ok]] = p[ok]
    todo = todo[~ok]
  return pos[..., 0], pos[..., 1]


def count(rng: np.random.Generator, n: int, image_size: int):
  """3..10 non-overlapping shapes of random kind, size and colour; label = count - 3."""
  lo, hi = COUNT_RANGE
  labels = balanced_labels(rng, n, hi - lo + 1)
  number = labels + lo
  radius = rng.uniform(*COUNT_SCALE, (n, hi))
  cx, cy = _place_disjoint(rng, radius, number, COUNT_GAP)
  shape = rng.choice(np.array([SQUARE, CIRCLE, TRIANGLE, HEART]), (n, hi))
  angle = rng.uniform(0.0, 2.0 * np.pi, (n, hi))
  colour = _bright_colours(rng, n * hi).reshape(n, hi, 3)
  canvas = _dark_background(rng, n, image_size)
  used = np.arange(hi)[None, :] < number[:, None]
  image_index = np.broadcast_to(np.arange(n)[:, None], (n, hi))[used]
  images = render_objects(canvas, image_index, shape[used], cx[used], cy[used],
                          radius[used], angle[used], colour[used], supersample=3)
  return _to_uint8(images), labels


def _bandpass_noise(rng: np.random.Generator, freq: np.ndarray, size: int) -> np.ndarray:
  """Isotropic noise with power around `freq` cycles per image, unit std: [n, S, S]."""
  white = rng.normal(0.0, 1.0, (len(freq), size, size))
  fy = np.fft.fftfreq(size)[:, None] * size
  fx = np.fft.rfftfreq(size)[None, :] * size
  radius = np.hypot(fy, fx)[None]
  ring = np.exp(-0.5 * ((radius - freq[:, None, None]) / (0.15 * freq[:, None, None])) ** 2)
  out = np.fft.irfft2(np.fft.rfft2(white) * ring, s=(size, size))
  return out / (out.std(axis=(1, 2), keepdims=True) + 1e-8)


def _texture_images(rng: np.random.Generator, pattern: np.ndarray, freq: np.ndarray,
                    theta: np.ndarray, size: int) -> np.ndarray:
  """Two-colour textures: pattern ids index TEXTURE_PATTERNS; freq in cycles per image."""
  n = len(pattern)
  grid = (np.arange(size) + 0.5) / size
  x, y = grid[None, None, :], grid[None, :, None]
  c, s = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
  w = 2.0 * np.pi * freq[:, None, None]
  u, v = (c * x + s * y) * w, (-s * x + c * y) * w
  p1 = rng.uniform(0, 2 * np.pi, n)[:, None, None]
  p2 = rng.uniform(0, 2 * np.pi, n)[:, None, None]
  value = np.zeros((n, size, size))
  for k, name in enumerate(TEXTURE_PATTERNS):
    sel = pattern == k
    if not sel.any():
      continue
    if name == "stripes":
      value[sel] = np.sin(u[sel] + p1[sel])
    elif name == "checks":
      value[sel] = 2.0 * np.sin(u[sel] + p1[sel]) * np.sin(v[sel] + p2[sel])
    elif name == "dots":
      value[sel] = np.cos(u[sel] + p1[sel]) + np.cos(v[sel] + p2[sel]) - 1.0
    else:
      value[sel] = _bandpass_noise(rng, freq[sel], size)
  sharp = rng.uniform(1.0, 4.0, n)[:, None, None]
  mix = (0.5 + 0.5 * np.tanh(sharp * value))[..., None]
  dark = hsv_to_rgb(rng.uniform(0, 1, n), rng.uniform(0, 1, n), rng.uniform(0.0, 0.4, n))
  light = hsv_to_rgb(rng.uniform(0, 1, n), rng.uniform(0, 1, n), rng.uniform(0.6, 1.0, n))
  swap = rng.random(n) < 0.5
  dark[swap], light[swap] = light[swap].copy(), dark[swap].copy()
  images = dark[:, None, None] * (1.0 - mix) + light[:, None, None] * mix
  images += rng.normal(0.0, 0.03, (n, size, size, 1))
  return _to_uint8(images)


def texture(rng: np.random.Generator, n: int, image_size: int):
  """Textures; label = pattern * 3 + frequency level (12 classes), random angle/phase."""
  labels = balanced_labels(rng, n, len(TEXTURE_PATTERNS) * len(TEXTURE_FREQUENCIES))
  pattern, level = np.divmod(labels, len(TEXTURE_FREQUENCIES))
  freq = np.asarray(TEXTURE_FREQUENCIES)[level] * rng.uniform(0.9, 1.1, n)
  theta = rng.uniform(0.0, np.pi, n)
  return _texture_images(rng, pattern, freq, theta, image_size), labels


@functools.lru_cache(maxsize=1)
def _digits_data() -> tuple[np.ndarray, np.ndarray]:
  from heat_jax.assets import load_digits
  counts, labels = load_digits()  # sklearn's digits, shipped: values 0..16
  images = np.clip(np.rint(counts * (255.0 / 16.0)), 0, 255).astype(np.uint8)
  return np.repeat(images[..., None], 3, axis=-1), labels.astype(np.int64)


def digits_order(seed: int) -> np.ndarray:
  """A seeded, stratified order of the 1797 sklearn digits: every prefix is ~balanced."""
  _, labels = _digits_data()
  rng = np.random.default_rng([seed, _task_id("digits")])
  key = np.zeros(len(labels))
  for c in np.unique(labels):
    idx = np.flatnonzero(labels == c)
    key[idx] = (rng.permutation(len(idx)) + rng.uniform(0, 1, len(idx))) / len(idx)
  return np.argsort(key, kind="stable")


# ------------------------------------------------------------------------------
# Pre-training generators and the mixture.
# ------------------------------------------------------------------------------

COLOUR_BINS = 6
SIZE_BINS = (0.08, 0.28)
TEXTURE_ANGLE_BINS = 6


def shape_class(rng: np.random.Generator, n: int, image_size: int):
  """Which of the 5 SHAPES a random sprite is."""
  labels = balanced_labels(rng, n, len(SHAPES))
  return _sprites(rng, n, image_size, shapes=(), shape=labels, scale=(0.14, 0.2)), labels


def sprite_colour(rng: np.random.Generator, n: int, image_size: int):
  """Hue bin (6 bins of 60 degrees, first centred on red) of a random sprite."""
  labels = balanced_labels(rng, n, COLOUR_BINS)
  hue = _bin_value(rng, labels, COLOUR_BINS, -0.5 / COLOUR_BINS, 1.0 - 0.5 / COLOUR_BINS,
                   margin=0.15)
  return _sprites(rng, n, image_size, shapes=range(len(SHAPES)), scale=(0.12, 0.2),
                  hue=hue), labels


def sprite_y(rng: np.random.Generator, n: int, image_size: int):
  """Bin (8) of the sprite centroid's y coordinate over SPRITE_RANGE."""
  labels = balanced_labels(rng, n, 8)
  cy = _bin_value(rng, labels, 8, *SPRITE_RANGE)
  return _sprites(rng, n, image_size, shapes=range(len(SHAPES)), scale=SPRITE_SCALE,
                  cy=cy), labels


def sprite_size(rng: np.random.Generator, n: int, image_size: int):
  """Bin (4) of the sprite scale over SIZE_BINS; the sprite is kept inside the image."""
  labels = balanced_labels(rng, n, 4)
  scale = _bin_value(rng, labels, 4, *SIZE_BINS, margin=0.1)
  cx = rng.uniform(scale + 0.02, 0.98 - scale)
  cy = rng.uniform(scale + 0.02, 0.98 - scale)
  return _sprites(rng, n, image_size, shapes=range(len(SHAPES)), scale=scale, cx=cx,
                  cy=cy), labels


def texture_angle(rng: np.random.Generator, n: int, image_size: int):
  """Stripes; label = bin (6 bins of 30 degrees) of their angle modulo 180 degrees."""
  labels = balanced_labels(rng, n, TEXTURE_ANGLE_BINS)
  theta = _bin_value(rng, labels, TEXTURE_ANGLE_BINS, 0.0, np.pi, margin=0.1)
  freq = rng.uniform(2.0, 6.0, n)
  return _texture_images(rng, np.zeros(n, np.int64), freq, theta, image_size), labels


PRETRAIN_COMPONENTS: tuple[tuple[str, Generator, int], ...] = (
    ("shape_class", shape_class, len(SHAPES)),
    ("colour", sprite_colour, COLOUR_BINS),
    ("sprite_y", sprite_y, 8),
    ("size", sprite_size, 4),
    ("texture_angle", texture_angle, TEXTURE_ANGLE_BINS),
)
PRETRAIN_OFFSETS = dict(zip([c[0] for c in PRETRAIN_COMPONENTS],
                            np.cumsum([0] + [c[2] for c in PRETRAIN_COMPONENTS])[:-1].tolist()))
PRETRAIN_NUM_CLASSES = sum(c[2] for c in PRETRAIN_COMPONENTS)
FRAME_COLOURS = np.array([[255, 64, 64], [64, 255, 64], [64, 96, 255], [255, 255, 64],
                          [255, 64, 255]], np.uint8)


def pretraining_mixture(rng: np.random.Generator, n: int, image_size: int, *,
                        return_component: bool = False):
  """Mix of the PRETRAIN_COMPONENTS as one task with PRETRAIN_NUM_CLASSES (29) classes.

  Component c (balanced across images) labels its images with
  `PRETRAIN_OFFSETS[c] + its own label`, draws them inside a frame 1/16 of the image
  wide (2 px at 32px) painted in `FRAME_COLOURS[c]`, so the label range is readable
  from the image. With `return_component` also returns each image's component index.
  """
  comp = balanced_labels(rng, n, len(PRETRAIN_COMPONENTS))
  width = max(1, int(round(image_size / 16)))
  images = np.zeros((n, image_size, image_size, 3), np.uint8)
  labels = np.zeros((n,), np.int64)
  for c, (name, gen, _) in enumerate(PRETRAIN_COMPONENTS):
    idx = np.flatnonzero(comp == c)
    inner, lab = gen(rng, len(idx), image_size - 2 * width)
    framed = np.broadcast_to(FRAME_COLOURS[c], (len(idx), image_size, image_size, 3)).copy()
    framed[:, width:image_size - width, width:image_size - width] = inner
    images[idx], labels[idx] = framed, lab + PRETRAIN_OFFSETS[name]
  return (images, labels, comp) if return_component else (images, labels)


# ------------------------------------------------------------------------------
# Tasks.
# ------------------------------------------------------------------------------

DOWNSTREAM_TASKS = ("sprite_x", "sprite_orientation", "count", "texture", "digits")
# name -> (generator, number of classes, native resolution)
GENERATORS: dict[str, tuple[Generator, int, int]] = {
    "sprite_x": (sprite_x, 8, 32),
    "sprite_orientation": (sprite_orientation, 8, 32),
    "count": (count, COUNT_RANGE[1] - COUNT_RANGE[0] + 1, 48),
    "texture": (texture, len(TEXTURE_PATTERNS) * len(TEXTURE_FREQUENCIES), 32),
    "digits": (None, 10, 8),   # not generated: see _digits_split
    **{name: (gen, k, 32) for name, gen, k in PRETRAIN_COMPONENTS},
    "pretraining": (pretraining_mixture, PRETRAIN_NUM_CLASSES, 32),
}
TRAIN_SPLITS = ("train800val200", "train800")
STREAMS = {"train800": 0, "val200": 1, "test": 2}


def class_names(name: str) -> Optional[list[str]]:
  """Label names of a downstream task (None: the pre-training tasks keep indices)."""
  names = {
      "sprite_x": [f"x bin {i} (left to right)" for i in range(8)],
      "sprite_orientation": [f"{45 * i}-{45 * (i + 1)} deg" for i in range(8)],
      "count": [f"{c} objects" for c in range(COUNT_RANGE[0], COUNT_RANGE[1] + 1)],
      "texture": [f"{p} {f:g} cycles" for p in TEXTURE_PATTERNS for f in TEXTURE_FREQUENCIES],
      "digits": [str(d) for d in range(10)],
  }.get(name)
  assert names is None or len(names) == num_classes(name)
  return names


def num_classes(name: str) -> int:
  """Number of classes of a synthetic task."""
  return GENERATORS[_check_name(name)][1]


def native_size(name: str) -> int:
  """Resolution at which a synthetic task is generated."""
  return GENERATORS[_check_name(name)][2]


def _check_name(name: str) -> str:
  if name not in GENERATORS:
    raise ConfigError(f"config.data.task={name!r} is not a synthetic task; use one of "
                      f"{', '.join(GENERATORS)}")
  return name


def _task_id(name: str) -> int:
  return zlib.crc32(name.encode())


def _resize_all(images: np.ndarray, image_size: int, method: str) -> np.ndarray:
  if images.shape[1:3] == (image_size, image_size):
    return images
  out = np.empty((len(images), image_size, image_size, 3), np.uint8)
  for i, image in enumerate(images):
    out[i] = resize_uint8(image, (image_size, image_size), method)
  return out


def generate_split(name: str, split: str, n: int, *, seed: int,
                   image_size: Optional[int] = None,
                   resize_method: str = "bicubic",
                   sizes: Optional[dict[str, int]] = None) -> tuple[np.ndarray, np.ndarray]:
  """(uint8 images, int32 labels) of one split ('train800', 'val200', 'test') of a task.

  Each split is its own rng stream; for `digits` the splits are slices of one seeded
  order, placed as if train800 and val200 had their default sizes.
  """
  gen, _, native = GENERATORS[_check_name(name)]
  if split not in STREAMS:
    raise ValueError(f"unknown split {split!r}; use one of {list(STREAMS)}")
  if name == "digits":
    return _digits_split(split, n, seed=seed, image_size=image_size or native,
                         resize_method=resize_method, sizes=sizes)
  return _generated(name, split, n, seed, image_size or native, resize_method)


@functools.lru_cache(maxsize=12)
def _generated(name: str, split: str, n: int, seed: int, image_size: int,
               resize_method: str) -> tuple[np.ndarray, np.ndarray]:
  """Memoised generation (a study builds the same splits once per method and seed);
  the arrays are read-only so that no caller can change another's data."""
  gen, _, native = GENERATORS[name]
  rng = np.random.default_rng([seed, _task_id(name), STREAMS[split]])
  images, labels = gen(rng, n, native)
  images = _resize_all(images, image_size, resize_method)
  labels = labels.astype(np.int32)
  images.flags.writeable = False
  labels.flags.writeable = False
  return images, labels


def _digits_split(split: str, n: int, *, seed: int, image_size: int, resize_method: str,
                  sizes: Optional[dict[str, int]] = None):
  """Digits splits are consecutive slices of one stratified order: train800, val200, test.

  `sizes` gives the lengths of train800 and val200 (default 800 and 200).
  """
  images, labels = _digits_data()
  sizes = {"train800": 800, "val200": 200, **(sizes or {})}
  start = {"train800": 0, "val200": sizes["train800"],
           "test": sizes["train800"] + sizes["val200"]}[split]
  idx = digits_order(seed)[start:start + n]
  return _resize_all(images[idx], image_size, resize_method), labels[idx].astype(np.int32)


DIGITS_TOTAL = 1797   # images in sklearn's load_digits


def split_sizes(name: str, *, num_train: int, num_val: int, num_test: int,
                train_split: str = "train800val200", seed: int = 0) -> dict[str, int]:
  """{'train800', 'val200', 'test'} sizes of a synthetic task; ConfigError when invalid.

  Generates nothing, so callers can check a whole study's tasks up front.
  """
  _check_name(name)
  if train_split not in TRAIN_SPLITS:
    raise ConfigError(f"config.data.train_split={train_split!r} is not valid for synthetic "
                      f"data; use one of {', '.join(TRAIN_SPLITS)}")
  if not 0 <= num_val < num_train or num_test <= 0:
    raise ConfigError(f"synthetic sizes need 0 <= num_val < num_train and num_test > 0 "
                      f"(got num_train={num_train}, num_val={num_val}, num_test={num_test})")
  sizes = {"train800": num_train - num_val, "val200": num_val, "test": num_test}
  if name == "digits":
    if num_train >= DIGITS_TOTAL:
      raise ConfigError(f"the digits task has {DIGITS_TOTAL} images; num_train={num_train} "
                        "leaves none for testing")
    sizes["test"] = min(num_test, DIGITS_TOTAL - num_train)
  if seed < 0:
    raise ConfigError(f"config.data.synthetic_seed={seed} must be >= 0")
  return sizes


def check_config(data_config: Any) -> dict[str, int]:
  """Every check of `build_synthetic` without generating data; returns the split sizes."""
  name = _check_name(data_config.task)
  k = GENERATORS[name][1]
  if data_config.num_classes not in (0, k):
    raise ConfigError(f"config.data.num_classes={data_config.num_classes} but synthetic "
                      f"task {name!r} has {k} classes; set it to {k} or 0")
  for field, valid in (("val_split", ("", "val200")), ("test_split", ("", "test"))):
    if data_config.get(field, "") not in valid:
      raise ConfigError(f"config.data.{field}={data_config.get(field)!r} is not valid for "
                        f"synthetic data; use {valid[1]!r} or ''")
  return split_sizes(name, num_train=int(data_config.num_train),
                     num_val=int(data_config.num_val), num_test=int(data_config.num_test),
                     train_split=data_config.train_split or "train800val200",
                     seed=int(data_config.synthetic_seed))


def make_task(name: str, *, seed: int, image_size: int, value_range: str,
              num_train: int = 1000, num_val: int = 200, num_test: int = 1000,
              train_split: str = "train800val200", resize_method: str = "bicubic") -> Task:
  """Builds a synthetic `Task` (in-memory splits) from a seed; see the module docstring.

  `num_train` is the size of train800 + val200 and `num_val` that of val200. For
  `digits` the test split holds min(num_test, 1797 - num_train) images.
  """
  _, k, native = GENERATORS[_check_name(name)]
  sizes = split_sizes(name, num_train=num_train, num_val=num_val, num_test=num_test,
                      train_split=train_split, seed=seed)
  norm = normalizer(value_range)
  splits = {}
  for split, n in sizes.items():
    if n == 0:
      continue
    images, labels = generate_split(name, split, n, seed=seed, image_size=image_size,
                                    resize_method=resize_method, sizes=sizes)
    splits[split] = ArraySplit(split, images, labels, norm)
  train = splits["train800"]
  if train_split == "train800val200" and num_val:
    train = ArraySplit("train800val200", np.concatenate([train.images, splits["val200"].images]),
                       np.concatenate([train.labels, splits["val200"].labels]), norm)
  info = {"source": "synthetic", "task": name, "seed": seed, "native_size": native,
          "train_split": train_split,
          "val_in_train": train_split == "train800val200" and num_val > 0,
          "split_sizes": {s: sp.num_examples for s, sp in splits.items()},
          "value_range": value_range, "resize_method": resize_method,
          "class_names": class_names(name)}
  return Task(name=f"synthetic/{name}", num_classes=k, train=train, test=splits["test"],
              val=splits["val200"] if num_val else None, info=info)


def build_synthetic(data_config: Any, *, image_size: int, value_range: str) -> Task:
  """The `synthetic` source: `config.data.task` names one of GENERATORS."""
  check_config(data_config)
  name, k = data_config.task, GENERATORS[data_config.task][1]
  train_split = data_config.train_split or "train800val200"
  task = make_task(name, seed=int(data_config.synthetic_seed), image_size=image_size,
                   value_range=value_range, num_train=int(data_config.num_train),
                   num_val=int(data_config.num_val), num_test=int(data_config.num_test),
                   train_split=train_split,
                   resize_method=data_config.get("resize_method", "bicubic"))
  return task


register_source("synthetic", build_synthetic)


# ------------------------------------------------------------------------------
# Example grid.
# ------------------------------------------------------------------------------


def save_example_grid(path: str, *, tasks: Sequence[str] = DOWNSTREAM_TASKS + ("pretraining",),
                      per_task: int = 8, seed: int = 0, image_size: int = 64) -> str:
  """Saves a PNG with `per_task` training examples (and labels) of each task per row."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(len(tasks), per_task, figsize=(1.3 * per_task, 1.45 * len(tasks)),
                           squeeze=False)
  for row, name in enumerate(tasks):
    images, labels = generate_split(name, "train800", per_task, seed=seed,
                                    image_size=image_size)
    for col in range(per_task):
      ax = axes[row, col]
      ax.imshow(images[col], interpolation="nearest")
      ax.set_title(str(labels[col]), fontsize=8)
      ax.set_xticks([])
      ax.set_yticks([])
    axes[row, 0].set_ylabel(name, fontsize=8)
  fig.tight_layout()
  with atomic_open(path, "wb") as f:   # no half-written PNG if interrupted
    fig.savefig(f, dpi=100, format="png")
  plt.close(fig)
  return path


def check_grid_args(out: str, tasks: str, per_task: int, image_size: int) -> list[str]:
  """The task list of the example grid; ConfigError (one line) for a bad argument."""
  names = [t.strip() for t in tasks.split(",") if t.strip()]
  if not names:
    raise ConfigError(f"--tasks is empty; use names from {', '.join(GENERATORS)}")
  for name in names:
    if name not in GENERATORS:
      raise ConfigError(f"--tasks: {name!r} is not a synthetic task; use names from "
                        f"{', '.join(GENERATORS)}")
  if not 1 <= per_task <= 64:
    raise ConfigError(f"--per_task={per_task} must be between 1 and 64")
  if not 8 <= image_size <= 512:
    raise ConfigError(f"--image_size={image_size} must be between 8 and 512")
  parent = os.path.dirname(os.path.abspath(out))
  if os.path.isdir(out) or not out.lower().endswith(".png"):
    raise ConfigError(f"--out={out} must be a .png file name")
  if not os.path.isdir(parent):
    raise ConfigError(f"--out={out}: folder {parent} does not exist; create it first")
  return names


def _define_flags() -> None:
  if "per_task" in flags.FLAGS:
    return
  flags.DEFINE_string("out", "synthetic_examples.png", "PNG file to write.")
  flags.DEFINE_string("tasks", ",".join(DOWNSTREAM_TASKS + ("pretraining",)),
                      "Comma-separated synthetic task names.")
  flags.DEFINE_integer("per_task", 8, "Examples per task (one row each), 1-64.")
  flags.DEFINE_integer("seed", 0, "Data seed.")
  flags.DEFINE_integer("image_size", 64, "Resolution of the shown images, 8-512.")


def main(argv: Sequence[str]) -> int:
  """Saves the example grid (absl main; takes no positional arguments)."""
  if len(argv) > 1:
    raise ConfigError(f"unexpected arguments {' '.join(argv[1:])}; use --out, --tasks, "
                      "--per_task, --seed, --image_size")
  f = flags.FLAGS
  tasks = check_grid_args(f.out, f.tasks, f.per_task, f.image_size)
  print(save_example_grid(f.out, tasks=tasks, per_task=f.per_task, seed=f.seed,
                          image_size=f.image_size))
  return 0


if __name__ == "__main__":
  from heat_jax import absl_cli
  absl_cli.run(main, _define_flags)
