"""The demo study checks every value before any directory, pretraining or run."""

import time

import pytest

from configs import demo
from heat_jax import experiment, study
from heat_jax.data import synthetic
from heat_jax.errors import ConfigError


@pytest.fixture
def no_work(monkeypatch, tmp_path):
  """Fails the test if the study pretrains, trains, or touches the cache."""
  def forbidden(*args, **kwargs):
    pytest.fail("the study started work before rejecting its config")
  monkeypatch.setattr(study, "pretrained_backbone", forbidden)
  monkeypatch.setattr(study, "enable_compilation_cache", forbidden)
  monkeypatch.setattr(experiment, "run", forbidden)
  monkeypatch.setenv("HEAT_JAX_CACHE", str(tmp_path / "cache"))


def fails_fast(config, tmp_path, match):
  workdir = tmp_path / "wd"
  start = time.time()
  with pytest.raises(ConfigError, match=match) as info:
    study.run(config, str(workdir))
  assert time.time() - start < 10
  assert "\n" not in str(info.value)
  assert not workdir.exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("arg,match", [
    ("tasks=nosuch", "config.study.tasks: unknown 'nosuch'; join names from sprite_x"),
    ("tasks=texture+nosuch", "unknown 'nosuch'"),
    ("tasks=", "config.study.tasks is empty"),
    ("tasks=texture+texture", "lists texture more than once"),
    ("variants=heat+nonsense", "config.study.variants: unknown 'nonsense'"),
    ("variants=", "config.study.variants is empty"),
    ("variants=lora+lora", "lists lora more than once"),
    ("seeds=0", "config.study.seeds=0 must be an integer >= 1"),
    ("seeds=-2", "seeds=-2"),
    ("epochs=0", "epochs must be >= 1"),
    ("budget=0", "budget must be >= 1 head"),
    ("budget=33", r"budget=33 exceeds the 32 heads of the model \(ViT-demo: 4 layers"),
    ("budget=-1", "budget must be a count"),
    ("strategy=nosuch", "config.importance.strategy=.nosuch. is not one of"),
    ("model=ViT-nosuch", "unknown model 'ViT-nosuch'"),
    ("pretrain_steps=0", "config.pretrain needs steps >= 1"),
    ("pretrain_images=10", "num_images=10"),
])
def test_bad_demo_arguments_fail_before_pretraining(no_work, tmp_path, arg, match):
  fails_fast(demo.get_config(arg), tmp_path, match)


@pytest.mark.parametrize("field,value,match", [
    ("study.data_seed", -1, "data_seed=-1 must be an integer >= 0"),
    ("base.data.num_train", 0, "num_val < num_train"),
    ("base.data.num_test", 0, "num_test > 0"),
    ("base.data.value_range", "0_1", "value_range='0_1'"),
    ("base.data.resize_method", "lanczos", "resize_method='lanczos'"),
    ("base.train.batch_size", 2000, "batch_size=2000 is larger than the 1000 training"),
    ("base.heat.scope", "block", "heat.scope='block'"),
    ("base.optim.lr", 0.0, "lr must be > 0"),
    ("pretrain.lr", 0.0, "lr=0.0"),
])
def test_bad_study_fields_fail_before_pretraining(no_work, tmp_path, field, value, match):
  c = demo.get_config()
  section, key = field.rsplit(".", 1)
  node = c
  for part in section.split("."):
    node = node[part]
  node[key] = value
  fails_fast(c, tmp_path, match)


def test_variant_overrides_are_validated_per_task(no_work, tmp_path):
  c = demo.get_config("tasks=texture+digits")
  c.base.data.num_train = 1797   # fine for texture, leaves no digits for testing
  c.base.data.num_val = 200
  fails_fast(c, tmp_path, "digits task has 1797 images")


def test_valid_demo_configs_pass_validation():
  assert study.validate(demo.get_config()) == (
      ["sprite_x", "sprite_orientation", "count", "texture"],
      ["heat", "heat_random", "heat_bottom", "lora", "linear", "full"])
  tasks, variants = study.validate(demo.get_config("tasks=digits+count,variants=heat,seeds=2"))
  assert tasks == ["digits", "count"] and variants == ["heat"]


def test_digits_size_constant_matches_the_data():
  assert len(synthetic._digits_data()[1]) == synthetic.DIGITS_TOTAL
