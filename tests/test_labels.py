"""Label functions of the derived VTAB tasks, on hand-made TFDS-style examples."""

import numpy as np
import pytest

from heat_jax.data.labels import LABEL_FNS, get_label_fn
from heat_jax.data.vtab_tasks import TASKS
from heat_jax.errors import ConfigError


def task_label(task: str, example: dict) -> int:
  """The label the VTAB table assigns to `example` for `task`."""
  return get_label_fn(TASKS[task].label_fn)(example)


def clevr(depths, n=None):
  depths = list(depths)
  n = len(depths) if n is None else n
  coords = np.zeros((len(depths), 3), np.float32)
  coords[:, 0] = 100.0   # x, y must not be mistaken for the depth
  coords[:, 1] = 200.0
  coords[:, 2] = depths
  return {"objects": {"size": np.zeros((n,), np.int64), "pixel_coords": coords}}


def kitti(objects):
  """objects: [(type, z)]."""
  types = np.array([t for t, _ in objects], np.int64)
  loc = np.zeros((len(objects), 3), np.float32)
  loc[:, 0] = -50.0
  loc[:, 1] = 1.5
  loc[:, 2] = [z for _, z in objects]
  return {"objects": {"type": types, "location": loc.reshape(-1, 3)}}


@pytest.mark.parametrize("num_objects,label", [(3, 0), (4, 1), (7, 4), (10, 7)])
def test_clevr_count(num_objects, label):
  assert task_label("clevr_count", clevr([9.0] * num_objects)) == label


@pytest.mark.parametrize("depth,label", [
    (0.5, 0), (7.99, 0), (8.0, 0), (8.01, 1), (8.5, 1), (8.6, 2), (9.0, 2), (9.4, 3),
    (9.5, 3), (9.9, 4), (10.0, 4), (10.01, 5), (99.0, 5)])
def test_clevr_dist_thresholds(depth, label):
  # thresholds [0, 8, 8.5, 9, 9.5, 10, 100]; label = largest i with thr[i] < d
  assert task_label("clevr_dist", clevr([12.0, depth, 15.0])) == label


def test_clevr_dist_uses_the_closest_object():
  assert task_label("clevr_dist", clevr([11.0, 8.7, 9.6])) == 2
  assert task_label("clevr_dist", clevr([11.0])) == 5


def test_clevr_dist_out_of_range_is_reported_not_clipped():
  assert task_label("clevr_dist", clevr([150.0])) == 6     # >= num_classes: loader rejects it
  assert task_label("clevr_dist", clevr([-1.0])) == -1


def test_kitti_no_vehicle_sentinel():
  assert task_label("kitti", kitti([])) == 3
  # pedestrians (3), cyclists (5) etc. are not vehicles, however close
  assert task_label("kitti", kitti([(3, 2.0), (4, 1.0), (5, 3.0), (7, 4.0)])) == 3


@pytest.mark.parametrize("z,label", [
    (2.0, 0), (8.0, 0), (8.1, 1), (19.9, 1), (20.0, 1), (20.5, 2), (998.0, 2)])
def test_kitti_distance_bins(z, label):
  assert task_label("kitti", kitti([(0, z)])) == label


def test_kitti_takes_the_closest_vehicle_of_types_car_van_truck():
  assert task_label("kitti", kitti([(0, 30.0), (1, 15.0), (3, 1.0)])) == 1   # van at 15 m
  assert task_label("kitti", kitti([(2, 6.0), (0, 40.0)])) == 0              # truck at 6 m
  assert task_label("kitti", kitti([(3, 5.0), (0, 25.0)])) == 2              # car at 25 m


@pytest.mark.parametrize("x,label", [(0, 0), (1, 0), (2, 1), (17, 8), (31, 15)])
def test_dsprites_loc(x, label):
  assert task_label("dsprites_loc", {"label_x_position": np.int64(x)}) == label


@pytest.mark.parametrize("v,label", [(0, 0), (2, 0), (3, 1), (5, 2), (7, 2), (8, 3), (39, 15)])
def test_dsprites_ori(v, label):
  assert task_label("dsprites_ori", {"label_orientation": np.int64(v)}) == label


def test_dsprites_bins_cover_16_classes_evenly():
  loc = [task_label("dsprites_loc", {"label_x_position": v}) for v in range(32)]
  ori = [task_label("dsprites_ori", {"label_orientation": v}) for v in range(40)]
  assert sorted(set(loc)) == list(range(16)) and np.bincount(loc).tolist() == [2] * 16
  assert sorted(set(ori)) == list(range(16))
  assert np.all(np.diff(ori) >= 0)


def test_smallnorb_and_plain_labels():
  ex = {"label_azimuth": np.int64(17), "label_elevation": np.int64(8), "label": np.int64(3),
        "label_category": np.int64(1)}
  assert task_label("smallnorb_azi", ex) == 17
  assert task_label("smallnorb_ele", ex) == 8
  for task in ("dtd", "cifar100", "dmlab", "diabetic_retinopathy"):
    assert task_label(task, ex) == 3


def test_every_table_label_fn_exists_and_unknown_names_fail():
  assert {t.label_fn for t in TASKS.values()} <= set(LABEL_FNS)
  with pytest.raises(ConfigError, match="label_fn"):
    get_label_fn("clevr_counts")
