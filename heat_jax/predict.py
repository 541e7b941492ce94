"""Top-k predictions of a finished run on image files.

Usage:
  python -m heat_jax.predict --workdir=workdirs/dtd/heat photo1.jpg photo2.png
  python -m heat_jax.predict --workdir=W --folder=DIR --top_k=3 --out=preds.csv

Loads the run's base checkpoint and adapter in one call (`heat_jax.load_adapter`,
checking the base's sha256), prepares every image as the run's data pipeline did
(decoded to RGB by `heat_jax.data.image_io` like the folder datasets, resized to the
model's image size with the run's resize method, scaled to its value range; all
recorded in the adapter files), runs the model
in batches and prints one line per image on stdout: the path and the top-k classes
(names recorded at training time, else label indices) with their softmax
probabilities. `--out=FILE.csv|.json` also writes them, atomically. `--folder` takes
every .jpg/.jpeg/.png under DIR, recursively, sorted by path.

Unreadable images stop the command before any prediction (exit 2; the first one is
named, with how many others fail), unless `--skip_unreadable` leaves them out with a
warning each. A workdir without a finished run, a missing file or an empty folder, a
bad --top_k or --out also exit 2 with one line `error: ...`.
"""

from __future__ import annotations

import csv
import io
import os
from typing import Any, Optional, Sequence

import numpy as np
from absl import flags, logging
from tqdm import tqdm

from heat_jax import absl_cli
from heat_jax.errors import ConfigError, DataError

FLAGS = flags.FLAGS
OUT_FORMATS = (".csv", ".json")


def define_flags() -> None:
  """The command's flags (defined on first use, so importing this module defines none)."""
  if "top_k" in FLAGS:
    return
  flags.DEFINE_string("workdir", None, "Workdir of a finished run (results.json and its "
                      "adapter files).")
  flags.DEFINE_string("folder", "", "Predict every .jpg/.jpeg/.png under this folder "
                      "(recursively), besides the image paths given as arguments.")
  flags.DEFINE_integer("top_k", 5, "Classes reported per image (at most the number of "
                       "classes).")
  flags.DEFINE_string("out", "", "Also write the predictions to this .csv or .json file.")
  flags.DEFINE_integer("batch_size", 64, "Images per forward pass.")
  flags.DEFINE_string("base", "", "Base checkpoint to load the adapter on (default: the "
                      "one the run recorded).")
  flags.DEFINE_bool("check_base", True, "Check the base checkpoint's sha256 against the "
                    "one the adapter was trained on.")
  flags.DEFINE_bool("skip_unreadable", False, "Leave unreadable images out (a warning "
                    "each) instead of stopping.")
  flags.DEFINE_bool("progress", True, "Show a progress bar on stderr.")
  flags.DEFINE_string("mask_dir", "", "Segmentation runs: write one label PNG (palette; "
                      "pixel = class index) per image here (default WORKDIR/masks).")


# ----------------------------------------------------------------------------- the run


def run_info(workdir: str) -> dict[str, Any]:
  """Preprocessing and class names of a finished run; ConfigError if it is not one."""
  from heat_jax import artifacts
  from heat_jax.io_utils import as_path, is_remote, read_json
  if not is_remote(workdir) and not os.path.isdir(workdir):
    raise ConfigError(f"--workdir={workdir} does not exist; pass the workdir of a finished "
                      "run (python run.py ... --workdir=DIR)")
  results_path = os.path.join(workdir, "results.json")
  if not as_path(results_path).exists():
    raise ConfigError(f"{workdir} holds no finished run (no results.json); finish the run "
                      "first (rerun its python run.py command to resume it)")
  try:
    results = read_json(results_path)
  except (OSError, ValueError) as e:
    raise ConfigError(f"cannot read {results_path} ({e}); rerun the run's command to "
                      "rewrite it") from None
  meta = artifacts.read_adapter_json(workdir)
  pre = meta.get("preprocess") or results.get("preprocess") or {
      "image_size": results["config"]["model"]["image_size"],
      "value_range": results.get("value_range"), "resize_method": results.get("resize_method")}
  num_classes = int(meta["model"]["num_classes"])
  names = meta.get("class_names") or results.get("class_names")
  if not names or len(names) != num_classes:
    names = [str(i) for i in range(num_classes)]
  return {"preprocess": pre, "class_names": [str(n) for n in names],
          "num_classes": num_classes, "method": results.get("method"),
          "task": results.get("task"), "config": results.get("config", {}),
          "palette": results.get("palette")}


def image_paths(paths: Sequence[str], folder: str) -> list[str]:
  """The images to predict: `paths`, then the folder's images; ConfigError if none."""
  from heat_jax.data.folder import image_files
  missing = [p for p in paths if not os.path.isfile(p)]
  if missing:
    raise ConfigError(f"image file not found: {missing[0]}"
                      + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
  out = list(paths)
  if folder:
    if not os.path.isdir(folder):
      raise ConfigError(f"--folder={folder} is not a directory")
    found = image_files(folder)
    if not found:
      raise ConfigError(f"--folder={folder} has no .jpg/.jpeg/.png images")
    out += found
  if not out:
    raise ConfigError("no images: pass image paths as arguments or --folder=DIR")
  return list(dict.fromkeys(out))


def readable(paths: list[str], skip: bool) -> list[str]:
  """`paths` without unreadable images (skip) or DataError naming the first one."""
  from heat_jax.data.folder import unreadable
  bad = unreadable(paths)
  if bad and not skip:
    path, why = bad[0]
    more = f"; {len(bad) - 1} more cannot be read either" if len(bad) > 1 else ""
    raise DataError(f"cannot read image {path} ({why}){more}; remove or replace it, or "
                    "pass --skip_unreadable to leave unreadable images out")
  for path, why in bad:
    logging.warning(f"skipping unreadable image {path} ({why})")
  dropped = {p for p, _ in bad}
  return [p for p in paths if p not in dropped]


# ----------------------------------------------------------------------------- predicting


def predict(model: Any, variables: dict, paths: list[str], preprocess: dict, *,
            top_k: int, batch_size: int, progress: bool = False
            ) -> tuple[np.ndarray, np.ndarray]:
  """(indices [N, k], probabilities [N, k]) of the top-k classes of every image."""
  import jax

  from heat_jax.data.folder import make_loader
  from heat_jax.data.preprocess import normalizer
  size = int(preprocess["image_size"])
  load = make_loader([(p, 0) for p in paths], image_size=size,
                     resize_method=preprocess["resize_method"])
  normalize = normalizer(preprocess["value_range"])
  probs_fn = jax.jit(lambda v, x: jax.nn.softmax(model.apply(v, x, train=False), axis=-1))
  indices, probs = [], []
  with tqdm(total=len(paths), desc="predict", unit="img", disable=not progress) as bar:
    for start in range(0, len(paths), batch_size):
      n = min(batch_size, len(paths) - start)
      batch = np.zeros((batch_size, size, size, 3), np.float32)   # one compiled shape
      for i in range(n):
        batch[i] = normalize(load(start + i)[0])
      p = np.asarray(probs_fn(variables, batch))[:n]
      order = np.argsort(-p, axis=-1, kind="stable")[:, :top_k]
      indices.append(order)
      probs.append(np.take_along_axis(p, order, axis=-1))
      bar.update(n)
  return np.concatenate(indices), np.concatenate(probs)


def rows(paths: list[str], indices: np.ndarray, probs: np.ndarray,
         names: list[str]) -> list[dict[str, Any]]:
  return [{"path": path, "top_k": [{"label": names[int(i)], "index": int(i),
                                    "prob": float(q)} for i, q in zip(idx, pr)]}
          for path, idx, pr in zip(paths, indices, probs)]


def write_predictions(path: str, predictions: list[dict], info: dict) -> None:
  """CSV (one row per image: path, then label/index/prob per rank) or JSON, atomically."""
  from heat_jax.io_utils import write_json, write_text
  if path.endswith(".json"):
    write_json(path, {"workdir": info["workdir"], "task": info["task"],
                      "method": info["method"], "predictions": predictions})
    return
  k = max(len(r["top_k"]) for r in predictions)
  buf = io.StringIO()
  writer = csv.writer(buf, lineterminator="\n")
  writer.writerow(["path"] + [f"top{r}_{f}" for r in range(1, k + 1)
                              for f in ("label", "index", "prob")])
  for r in predictions:
    writer.writerow([r["path"]] + [x for t in r["top_k"]
                                   for x in (t["label"], t["index"], f"{t['prob']:.6f}")])
  write_text(path, buf.getvalue())


def check_flags() -> None:
  if not FLAGS.workdir:
    raise ConfigError("--workdir is required: the workdir of a finished run")
  if FLAGS.top_k < 1:
    raise ConfigError(f"--top_k={FLAGS.top_k} must be >= 1")
  if FLAGS.batch_size < 1:
    raise ConfigError(f"--batch_size={FLAGS.batch_size} must be >= 1")
  if FLAGS.out and os.path.splitext(FLAGS.out)[1].lower() not in OUT_FORMATS:
    raise ConfigError(f"--out={FLAGS.out}: the file name must end in .csv or .json")


def main(argv: Sequence[str]) -> int:
  """absl main: `argv` is the program name followed by image paths."""
  check_flags()
  info = run_info(FLAGS.workdir)
  paths = readable(image_paths(list(argv[1:]), FLAGS.folder), FLAGS.skip_unreadable)
  if not paths:
    raise DataError("none of the images can be read")
  from heat_jax.artifacts import load_adapter
  model, variables = load_adapter(FLAGS.workdir, base=FLAGS.base or None,
                                  check_base=FLAGS.check_base)
  if info["config"].get("task_kind") == "segmentation":   # label PNGs, not top-k
    from heat_jax.segmentation.masks import write_masks
    out_dir = FLAGS.mask_dir or os.path.join(FLAGS.workdir, "masks")
    for path in write_masks(model, variables, paths, info["config"], out_dir,
                            info.get("palette")):
      print(path)
    return 0
  top_k = min(FLAGS.top_k, info["num_classes"])
  logging.info(f"{info['method']} run on {info['task']} ({FLAGS.workdir}): top-{top_k} of "
               f"{info['num_classes']} classes for {len(paths)} images")
  indices, probs = predict(model, variables, paths, info["preprocess"], top_k=top_k,
                           batch_size=FLAGS.batch_size, progress=FLAGS.progress)
  predictions = rows(paths, indices, probs, info["class_names"])
  for r in predictions:
    print(r["path"] + "\t" + ", ".join(f"{t['label']} ({t['prob']:.3f})" for t in r["top_k"]))
  if FLAGS.out:
    write_predictions(FLAGS.out, predictions, {**info, "workdir": FLAGS.workdir})
    logging.info(f"wrote {FLAGS.out}")
  return 0


def run(argv: Optional[Sequence[str]] = None) -> None:
  absl_cli.run(main, define_flags, argv)


if __name__ == "__main__":
  run()
