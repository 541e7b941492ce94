"""Bad TFDS inputs (names, versions, splits, label functions, data_dir) give one line."""

import pytest

from heat_jax.data import build_task
from heat_jax.errors import ConfigError, DataError

pytest.importorskip("tensorflow_datasets")
from tests.test_data_pipeline import tiny_config, tiny_data_dir  # noqa: E402,F401  (fixture)


def one_line_error(kind, c, match):
  with pytest.raises(kind, match=match) as info:
    build_task(c, image_size=8)
  assert "\n" not in str(info.value)
  return str(info.value)


@pytest.mark.parametrize("split,match", [
    ("test[:0]", "cannot read split 'test\\[:0\\]'"),
    ("test[5:2]", "split 'test\\[5:2\\]' of heat_jax_tiny_images .* is empty"),
    ("test[:50]", "incompatible with 11 examples"),
    ("test[:200%]", "Error parsing split"),
    ("tset", "cannot read split 'tset'"),
])
def test_bad_tfds_splits(tiny_data_dir, split, match):
  one_line_error(DataError, tiny_config(tiny_data_dir, test_split=split), match)


def test_label_fn_reading_a_missing_field(tiny_data_dir):
  msg = one_line_error(ConfigError, tiny_config(tiny_data_dir, label_fn="smallnorb_azi"),
                       "label_fn='smallnorb_azi' reads 'label_azimuth'")
  assert "['image', 'label']" in msg
  one_line_error(ConfigError, tiny_config(tiny_data_dir, label_fn="nosuch"),
                 "label_fn='nosuch' is not one of")


def test_bad_names_and_versions(tiny_data_dir):
  one_line_error(DataError, tiny_config(tiny_data_dir, tfds_name="heat_jax_tiny_images:abc"),
                 "bad version 'abc'")
  one_line_error(DataError, tiny_config(tiny_data_dir, tfds_name="heat_jax_tiny_images:9.9.9"),
                 "cannot be loaded at version 9.9.9, only: 1.0.0")
  one_line_error(DataError, tiny_config(tiny_data_dir, tfds_name="no_such_ds"),
                 "TFDS has no dataset 'no_such_ds'")


def test_data_dir_that_is_a_file(tmp_path):
  f = tmp_path / "file"
  f.write_text("x")
  c = tiny_config(f)
  one_line_error(ConfigError, c, "data dir .*file \\(from config.data.data_dir\\) is a file")
