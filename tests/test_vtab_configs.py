"""configs/vtab.py against the task table of shared/reference/vtab.md section 2."""

import pytest

from configs.vtab import SWIN_B_CHECKPOINT, get_config
from heat_jax.data.preprocess import resolve_value_range
from heat_jax.data.tfds_source import check_carve
from heat_jax.data.vtab_tasks import TASKS, get_task
from heat_jax.errors import ConfigError, DataError
from heat_jax.models import model_info

# Transcribed from vtab.md section 2: (group, TFDS builder, val200, test, classes, derived label).
VTAB_MD = {
    "cifar100": ("N", "cifar100:3.*.*", "train[45000:45200]", "test", 100, False),
    "caltech101": ("N", "caltech101:3.*.*", "train[2754:2954]", "test", 102, False),
    "dtd": ("N", "dtd:3.*.*", "validation[:200]", "test", 47, False),
    "oxford_flowers102": ("N", "oxford_flowers102:2.*.*", "validation[:200]", "test", 102, False),
    "oxford_iiit_pet": ("N", "oxford_iiit_pet:3.*.*", "train[2944:3144]", "test", 37, False),
    "svhn": ("N", "svhn_cropped:3.*.*", "train[65931:66131]", "test", 10, False),
    "sun397": ("N", "sun397/tfds:4.*.*", "validation[:200]", "test", 397, False),
    "patch_camelyon": ("S", "patch_camelyon:2.*.*", "validation[:200]", "test", 2, False),
    "eurosat": ("S", "eurosat/rgb:2.*.*", "train[16200:16400]", "train[21600:]", 10, False),
    "resisc45": ("S", "resisc45:3.*.*", "train[18900:19100]", "train[25200:]", 45, False),
    "diabetic_retinopathy": ("S", "diabetic_retinopathy_detection/btgraham-300:3.*.*",
                             "validation[:200]", "test", 5, False),
    "clevr_count": ("T", "clevr:3.*.*", "train[63000:63200]", "validation", 8, True),
    "clevr_dist": ("T", "clevr:3.*.*", "train[63000:63200]", "validation", 6, True),
    "dmlab": ("T", "dmlab:2.0.1", "validation[:200]", "test", 6, False),
    "kitti": ("T", "kitti:3.1.0", "validation[:200]", "test", 4, True),
    "dsprites_loc": ("T", "dsprites:2.*.*", "train[589824:590024]", "train[663552:]", 16, True),
    "dsprites_ori": ("T", "dsprites:2.*.*", "train[589824:590024]", "train[663552:]", 16, True),
    "smallnorb_azi": ("T", "smallnorb:2.*.*", "test[:200]", "test[50%:]", 18, True),
    "smallnorb_ele": ("T", "smallnorb:2.*.*", "test[:200]", "test[50%:]", 9, True),
}
# TFDS 4.9 can only build oxford_iiit_pet 4.0.0 (same splits; corrupt images fixed).
KNOWN_DEVIATIONS = {"oxford_iiit_pet": "oxford_iiit_pet:4.*.*"}
GROUP = {"N": "natural", "S": "specialized", "T": "structured"}
MANUAL = {"diabetic_retinopathy", "resisc45"}


def test_the_table_has_exactly_the_19_tasks_in_order():
  assert list(TASKS) == list(VTAB_MD)
  assert [sum(v[0] == g for v in VTAB_MD.values()) for g in "NST"] == [7, 4, 8]


@pytest.mark.parametrize("task", list(VTAB_MD))
def test_final_config(task):
  group, builder, val200, test, classes, derived = VTAB_MD[task]
  c = get_config(task)
  assert c.data.source == "tfds"
  assert c.data.task == task
  assert c.data.tfds_name == KNOWN_DEVIATIONS.get(task, builder)
  assert c.data.train_split == f"train[:800]+{val200}"
  assert c.data.val_split == ""
  assert c.data.test_split == test
  assert c.data.num_classes == classes
  assert (c.data.label_fn != "label") == derived
  assert TASKS[task].group == GROUP[group]
  assert TASKS[task].manual_download == (task in MANUAL)
  # paper recipe defaults
  assert c.method.name == "heat"
  assert (c.model.name, c.model.pretrained, c.model.image_size) == ("ViT-B_16", "ViT-B_16", 224)
  assert (c.optim.lr, c.optim.weight_decay, c.train.batch_size) == (1e-3, 1e-4, 64)
  assert (c.train.epochs, c.optim.warmup_epochs) == (100, 10)


@pytest.mark.parametrize("task", list(VTAB_MD))
def test_tune_config_trains_on_train800_and_scores_val200(task):
  val200 = VTAB_MD[task][2]
  c = get_config(f"{task},tune=True")
  assert (c.data.train_split, c.data.val_split, c.data.test_split) == (
      "train[:800]", val200, val200)


def test_method_and_model_args():
  c = get_config("dtd,method=lora,rank=4,model=Swin-B,lr=5e-3,epochs=7,seed=3")
  assert (c.method.name, c.lora.rank, c.optim.lr, c.train.epochs, c.seed) == (
      "lora", 4, 5e-3, 7, 3)
  assert (c.model.name, c.model.pretrained) == ("Swin-B", SWIN_B_CHECKPOINT)
  assert c.data.value_range == "auto"
  assert resolve_value_range(c.data.value_range, model_info(c.model.name).value_range
                             ) == "imagenet"
  d = get_config("dtd")
  assert resolve_value_range(d.data.value_range, model_info(d.model.name).value_range
                             ) == "minus1_1"
  c = get_config("svhn,budget=12,scope=layer,select=random,strategy=gate")
  assert (c.heat.budget, c.heat.scope, c.heat.select, c.importance.strategy) == (
      12.0, "layer", "random", "gate")
  assert get_config("dtd,method=adapter,rank=16").adapter.dim == 16


def test_source_and_paths():
  c = get_config("dtd,source=folder,root=/data/dtd")
  assert (c.data.source, c.data.folder_root) == ("folder", "/data/dtd")
  assert (c.data.train_split, c.data.val_split, c.data.test_split) == (
      "train800val200", "", "test")
  c = get_config("dtd,root=/data/dtd,tune")
  assert c.data.source == "folder"
  assert (c.data.train_split, c.data.val_split) == ("train800", "val200")
  assert get_config("dtd,data_dir=gs://bucket/tfds").data.data_dir == "gs://bucket/tfds"
  assert get_config("cifar").data.task == "cifar100"


@pytest.mark.parametrize("arg,match", [
    ("imagenet", "valid tasks: cifar100, caltech101"),
    ("", "needs a task"),
    ("dtd,ranks=4", "unknown config argument"),
    ("dtd,tune=maybe", "True or False"),
])
def test_bad_args_raise_one_line_config_errors(arg, match):
  with pytest.raises(ConfigError, match=match) as info:
    get_config(arg)
  assert "\n" not in str(info.value)


# Sizes of the TFDS splits that task_adaptation carves from (TFDS catalogue).
SPLIT_SIZES = {"cifar100": 50000, "caltech101": 3060, "oxford_iiit_pet": 3680, "svhn": 73257,
               "eurosat": 27000, "resisc45": 31500, "clevr_count": 70000, "clevr_dist": 70000,
               "dsprites_loc": 737280, "dsprites_ori": 737280}


@pytest.mark.parametrize("task", list(SPLIT_SIZES))
def test_carve_offsets_follow_from_split_sizes(task):
  val, test = TASKS[task].carve.splits(SPLIT_SIZES[task])
  assert val == VTAB_MD[task][2]
  if test is not None:
    assert test == VTAB_MD[task][3]


class _Split:
  def __init__(self, n):
    self.num_examples = n


class _Info:
  def __init__(self, sizes):
    self.splits = {k: _Split(v) for k, v in sizes.items()}


def test_carve_check_rejects_other_split_sizes():
  vt = get_task("eurosat")
  splits = vt.splits()
  check_carve(vt, splits, _Info({"train": 27000}))   # matches
  check_carve(vt, splits, _Info({}))                  # no metadata (mock data): skipped
  with pytest.raises(DataError, match=r"train\[16800:17000\]"):
    check_carve(vt, splits, _Info({"train": 28000}))


def test_tfds_names_resolve_in_the_installed_tfds(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  for name in sorted({t.tfds_name for t in TASKS.values()}):
    builder = tfds.builder(name, data_dir=str(tmp_path))
    assert builder.info.features["image"] is not None
    if TASKS_BY_TFDS[name].label_fn == "label":
      assert builder.info.features["label"].num_classes == TASKS_BY_TFDS[name].num_classes


TASKS_BY_TFDS = {t.tfds_name: t for t in TASKS.values()}


def test_rank_shortcut_sets_each_methods_own_field():
  """`rank=` goes to the field the method declares; methods without one refuse it."""
  from heat_jax.errors import ConfigError
  plain = get_config("dtd")
  c = get_config("dtd,method=heat,rank=5")
  assert c.lora.rank == 5 and c.adapter.dim == plain.adapter.dim
  c = get_config("dtd,method=adapter,rank=16")
  assert c.adapter.dim == 16 and c.lora.rank == plain.lora.rank
  with pytest.raises(ConfigError, match="has no rank"):
    get_config("dtd,method=linear,rank=3")
