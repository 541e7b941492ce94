"""Label functions: a TFDS example dict (numpy) -> int class id.

The derived VTAB tasks follow `google-research/task_adaptation`. A function may return
an id outside [0, num_classes) for an odd example (e.g. a CLEVR scene with no objects);
the loader checks the range and reports it.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from heat_jax.errors import ConfigError

Example = Mapping[str, Any]
LabelFn = Callable[[Example], int]

CLEVR_DIST_THRESHOLDS = np.array([0.0, 8.0, 8.5, 9.0, 9.5, 10.0, 100.0])
KITTI_DIST_THRESHOLDS = np.array([-100.0, 8.0, 20.0, 999.0])
KITTI_NO_VEHICLE = 1000.0          # distance used when a scene has no vehicle
KITTI_VEHICLE_TYPES = 3            # objects.type < 3: Car, Van, Truck
DSPRITES_X_POSITIONS = 32
DSPRITES_ORIENTATIONS = 40
DSPRITES_CLASSES = 16


def bin_index(value: float, thresholds: np.ndarray) -> int:
  """Largest i with thresholds[i] < value (-1 when none); thresholds ascending."""
  return int(np.sum(np.asarray(thresholds) < value)) - 1


def plain_label(example: Example) -> int:
  return int(example["label"])


def clevr_count(example: Example) -> int:
  """Number of objects minus 3 (scenes hold 3-10 objects -> classes 0-7)."""
  return int(np.size(example["objects"]["size"])) - 3


def clevr_dist(example: Example) -> int:
  """Depth of the closest object, binned by `CLEVR_DIST_THRESHOLDS` (6 classes)."""
  depth = np.asarray(example["objects"]["pixel_coords"], np.float64).reshape(-1, 3)[:, 2]
  if depth.size == 0:
    return -1
  return bin_index(float(depth.min()), CLEVR_DIST_THRESHOLDS)


def kitti_dist(example: Example) -> int:
  """Closest vehicle's z distance: 0 <= 8 m, 1 8-20 m, 2 20-999 m, 3 no vehicle."""
  objects = example["objects"]
  types = np.asarray(objects["type"]).reshape(-1)
  z = np.asarray(objects["location"], np.float64).reshape(-1, 3)[:, 2]
  vehicles = z[types < KITTI_VEHICLE_TYPES]
  dist = float(np.min(np.append(vehicles, KITTI_NO_VEHICLE)))
  return bin_index(dist, KITTI_DIST_THRESHOLDS)


def dsprites_loc(example: Example) -> int:
  """x position (32 values) -> 16 classes."""
  factor = DSPRITES_X_POSITIONS / DSPRITES_CLASSES
  return int(np.floor(float(example["label_x_position"]) / factor))


def dsprites_ori(example: Example) -> int:
  """Orientation (40 values) -> 16 classes: floor(v / 2.5)."""
  factor = DSPRITES_ORIENTATIONS / DSPRITES_CLASSES
  return int(np.floor(float(example["label_orientation"]) / factor))


def smallnorb_azi(example: Example) -> int:
  return int(example["label_azimuth"])


def smallnorb_ele(example: Example) -> int:
  return int(example["label_elevation"])


LABEL_FNS: dict[str, LabelFn] = {
    "label": plain_label,
    "clevr_count": clevr_count,
    "clevr_dist": clevr_dist,
    "kitti_dist": kitti_dist,
    "dsprites_loc": dsprites_loc,
    "dsprites_ori": dsprites_ori,
    "smallnorb_azi": smallnorb_azi,
    "smallnorb_ele": smallnorb_ele,
}


# The top-level example fields each label function reads (checked against the dataset's
# features before any example is decoded).
LABEL_FIELDS: dict[str, tuple[str, ...]] = {
    "label": ("label",),
    "clevr_count": ("objects",),
    "clevr_dist": ("objects",),
    "kitti_dist": ("objects",),
    "dsprites_loc": ("label_x_position",),
    "dsprites_ori": ("label_orientation",),
    "smallnorb_azi": ("label_azimuth",),
    "smallnorb_ele": ("label_elevation",),
}


def get_label_fn(name: str) -> LabelFn:
  """The label function called `name` (`config.data.label_fn`)."""
  if name not in LABEL_FNS:
    raise ConfigError(f"config.data.label_fn={name!r} is not one of {sorted(LABEL_FNS)}")
  return LABEL_FNS[name]
