"""The 19 VTAB-1k tasks: TFDS builders, task_adaptation split strings, labels.

Split strings follow `google-research/task_adaptation`: `train800` is always
`train[:800]`, `val200` is 200 held-out images (task-specific), `train800val200` joins
both with `+`, and `test` is the task's test split or the carved remainder of `train`.
The literal carve offsets assume the current TFDS split sizes; `Carve` records how
task_adaptation computes them so the loader can check them against the prepared data.

Deviation from task_adaptation: `oxford_iiit_pet:3.*.*` cannot be built by TFDS >= 4.9
(only 4.0.0 exists: same splits and sizes, corrupt images fixed), so the table uses
`oxford_iiit_pet:4.*.*`.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from heat_jax.errors import ConfigError

GROUPS = ("natural", "specialized", "structured")
GROUP_SHORT = {"natural": "N", "specialized": "S", "structured": "T"}


@dataclasses.dataclass(frozen=True)
class Carve:
  """How task_adaptation carves val/test out of `base`: start offsets in percent of its size."""

  base: str
  val_percent: int
  test_percent: Optional[int] = None

  def splits(self, base_size: int) -> tuple[str, Optional[str]]:
    """(val200, test) split strings for a `base` split of `base_size` examples."""
    start = base_size * self.val_percent // 100
    val = f"{self.base}[{start}:{start + 200}]"
    if self.test_percent is None:
      return val, None
    return val, f"{self.base}[{base_size * self.test_percent // 100}:]"


@dataclasses.dataclass(frozen=True)
class VtabTask:
  """One VTAB-1k task."""

  name: str
  group: str
  tfds_name: str
  val200: str
  test: str
  num_classes: int
  label_fn: str = "label"
  binary_image: bool = False     # dsprites: pixels are {0, 1}
  carve: Optional[Carve] = None
  train800: str = "train[:800]"

  @property
  def train800val200(self) -> str:
    return f"{self.train800}+{self.val200}"

  @property
  def manual_download(self) -> bool:
    return self.name in MANUAL_INSTRUCTIONS

  def splits(self, tune: bool = False) -> dict[str, str]:
    """Train / val / test split strings: final protocol, or tuning (train800 -> val200)."""
    if tune:
      return {"train": self.train800, "val": self.val200, "test": self.val200}
    return {"train": self.train800val200, "val": "", "test": self.test}


_t = VtabTask
_NAT, _SPE, _STR = GROUPS
TASKS: dict[str, VtabTask] = {t.name: t for t in (
    _t("cifar100", _NAT, "cifar100:3.*.*", "train[45000:45200]", "test", 100,
       carve=Carve("train", 90)),
    _t("caltech101", _NAT, "caltech101:3.*.*", "train[2754:2954]", "test", 102,
       carve=Carve("train", 90)),
    _t("dtd", _NAT, "dtd:3.*.*", "validation[:200]", "test", 47),
    _t("oxford_flowers102", _NAT, "oxford_flowers102:2.*.*", "validation[:200]", "test", 102),
    _t("oxford_iiit_pet", _NAT, "oxford_iiit_pet:4.*.*", "train[2944:3144]", "test", 37,
       carve=Carve("train", 80)),
    _t("svhn", _NAT, "svhn_cropped:3.*.*", "train[65931:66131]", "test", 10,
       carve=Carve("train", 90)),
    _t("sun397", _NAT, "sun397/tfds:4.*.*", "validation[:200]", "test", 397),
    _t("patch_camelyon", _SPE, "patch_camelyon:2.*.*", "validation[:200]", "test", 2),
    _t("eurosat", _SPE, "eurosat/rgb:2.*.*", "train[16200:16400]", "train[21600:]", 10,
       carve=Carve("train", 60, 80)),
    _t("resisc45", _SPE, "resisc45:3.*.*", "train[18900:19100]", "train[25200:]", 45,
       carve=Carve("train", 60, 80)),
    _t("diabetic_retinopathy", _SPE, "diabetic_retinopathy_detection/btgraham-300:3.*.*",
       "validation[:200]", "test", 5),
    _t("clevr_count", _STR, "clevr:3.*.*", "train[63000:63200]", "validation", 8,
       label_fn="clevr_count", carve=Carve("train", 90)),
    _t("clevr_dist", _STR, "clevr:3.*.*", "train[63000:63200]", "validation", 6,
       label_fn="clevr_dist", carve=Carve("train", 90)),
    _t("dmlab", _STR, "dmlab:2.0.1", "validation[:200]", "test", 6),
    _t("kitti", _STR, "kitti:3.1.0", "validation[:200]", "test", 4, label_fn="kitti_dist"),
    _t("dsprites_loc", _STR, "dsprites:2.*.*", "train[589824:590024]", "train[663552:]", 16,
       label_fn="dsprites_loc", binary_image=True, carve=Carve("train", 80, 90)),
    _t("dsprites_ori", _STR, "dsprites:2.*.*", "train[589824:590024]", "train[663552:]", 16,
       label_fn="dsprites_ori", binary_image=True, carve=Carve("train", 80, 90)),
    _t("smallnorb_azi", _STR, "smallnorb:2.*.*", "test[:200]", "test[50%:]", 18,
       label_fn="smallnorb_azi"),
    _t("smallnorb_ele", _STR, "smallnorb:2.*.*", "test[:200]", "test[50%:]", 9,
       label_fn="smallnorb_ele"),
)}

TASK_NAMES: tuple[str, ...] = tuple(TASKS)
ALIASES = {"cifar": "cifar100"}   # the PETL directory name of CIFAR-100

MANUAL_INSTRUCTIONS = {
    "resisc45": ("download NWPU-RESISC45.rar from https://1drv.ms/u/s!AmgKYzARBl5ca3HNaHIlzp_IXjs "
                 "and extract it into the manual_dir"),
    "diabetic_retinopathy": (
        "download the Kaggle files from "
        "https://www.kaggle.com/c/diabetic-retinopathy-detection/data "
        "into the manual_dir, unpack test.zip into test/ and sample.zip into sample/, and unpack "
        "trainLabels.csv and sampleSubmissions.csv"),
}


def get_task(name: str) -> VtabTask:
  """The table entry of a VTAB task id (ConfigError listing the valid ids otherwise)."""
  name = ALIASES.get(name, name)
  if name not in TASKS:
    raise ConfigError(f"unknown VTAB task {name!r}; valid tasks: {', '.join(TASK_NAMES)}")
  return TASKS[name]


def tasks_in_group(group: str) -> list[str]:
  return [t.name for t in TASKS.values() if t.group == group]
