"""Intrinsic dimension of attention vs MLP on the demo backbone (KAdaptation's analysis).

  python -m heat_jax.tools.intrinsic_dim --workdir=workdirs/intrinsic_dim \\
      [--task=texture] [--parts=attention,mlp] [--dims=25,50,...] [--epochs=6] [--seed=0]

For each submodule type (attention: every q/k/v/out; MLP: every MLP) it trains, on one
synthetic task and through the ordinary engine (`Trainer`):
  * full fine-tuning of only that type's parameters (plus the head): the reference;
  * only theta_d, with that type's parameters = theta0 + P theta_d for a fixed random
    Fastfood projection P (`heat_jax.tools.subspace`), for every d of the grid (plus
    the head), with the same learning rate (P is scaled so that it transfers);
and reports d90, the smallest d of the grid whose test top-1 reaches 90 % of the
reference ("-" when none does). A head-only run (the linear probe, d = 0) is shown for
scale. The backbone is the offline demo's `ViT-demo`, pretrained once on the synthetic
mixture and cached (`heat_jax.study.pretrained_backbone`, shared with the demo study);
data sizes, batch size and schedule are the demo's (`configs/demo.py`).

Writes into --workdir (atomically): intrinsic_dim.json (every number), intrinsic_dim.md
(the table) and intrinsic_dim.png (test top-1 against d, the 90 % lines). Exit code 2
with one line on stderr for bad flags.
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import jax
from absl import flags

from heat_jax import absl_cli
from heat_jax.errors import ConfigError, UserError
from heat_jax.io_utils import atomic_open, write_json, write_text

FRACTION = 0.9
Log = Callable[[str], Any]

FLAGS = flags.FlagValues()
flags.DEFINE_string("workdir", None, "Output directory (intrinsic_dim.json/.md/.png). "
                    "Required.", flag_values=FLAGS)
flags.DEFINE_string("task", "texture", "Synthetic downstream task: sprite_x, "
                    "sprite_orientation, count, texture, digits.", flag_values=FLAGS)
flags.DEFINE_string("parts", "attention,mlp", "Submodule types, comma-separated: "
                    "attention, mlp.", flag_values=FLAGS)
flags.DEFINE_string("dims", "200,400,800,1600,3200,6400,12800,25600",
                    "Subspace dimensions d, comma-separated integers >= 1.", flag_values=FLAGS)
flags.DEFINE_integer("epochs", 6, "Epochs of every run.", lower_bound=1, flag_values=FLAGS)
flags.DEFINE_integer("seed", 0, "Run seed (data order, head init) and seed of P.",
                     flag_values=FLAGS)
flags.DEFINE_float("lr", 1e-2, "Peak learning rate of every run (AdamW, warmup 1 epoch, "
                   "cosine); on texture the best of 1e-3, 3e-3, 1e-2 for full fine-tuning "
                   "of attention and of the MLP.", flag_values=FLAGS)
flags.DEFINE_string("model", "ViT-demo", "Backbone (pretrained once on the synthetic "
                    "mixture and cached, as by the demo study).", flag_values=FLAGS)
flags.DEFINE_integer("pretrain_steps", 1500, "Pretraining steps of the backbone (the "
                     "cache key includes them).", flag_values=FLAGS)
flags.DEFINE_integer("pretrain_images", 20000, "Pretraining images.", flag_values=FLAGS)
flags.DEFINE_integer("num_train", 1000, "Training images of the task.", flag_values=FLAGS)
flags.DEFINE_integer("num_test", 1000, "Test images of the task.", flag_values=FLAGS)
flags.DEFINE_integer("batch_size", 50, "Training batch size.", flag_values=FLAGS)
flags.DEFINE_boolean("help", False, "Show this help.", short_name="?", flag_values=FLAGS)


# ----------------------------------------------------------------------------- d90


def d90(reference: float, curve: Sequence[tuple[int, float]],
        fraction: float = FRACTION) -> Optional[int]:
  """The smallest d of `curve` [(d, accuracy)] with accuracy >= fraction * reference.

  A 1e-9 slack keeps float rounding (0.9 * 0.8 = 0.7200000000000001) from rejecting an
  accuracy that reaches the target exactly.
  """
  reached = [d for d, acc in curve if acc >= fraction * reference - 1e-9]
  return min(reached) if reached else None


# ----------------------------------------------------------------------------- config


def parse_list(text: str, flag: str) -> list[str]:
  items = [t.strip() for t in str(text).split(",") if t.strip()]
  if not items:
    raise ConfigError(f"--{flag} is empty")
  if len(set(items)) != len(items):
    raise ConfigError(f"--{flag}={text} repeats a value")
  return items


def parse_dims(text: str) -> list[int]:
  try:
    dims = [int(t) for t in parse_list(text, "dims")]
  except ValueError:
    raise ConfigError(f"--dims={text} must be comma-separated integers, e.g. "
                      "--dims=50,100,200") from None
  if min(dims) < 1:
    raise ConfigError(f"--dims={text}: every d must be >= 1")
  return sorted(dims)


def study_config(*, model: str, task: str, epochs: int, seed: int, lr: float,
                 pretrain_steps: int, pretrain_images: int, num_train: int, num_test: int,
                 batch_size: int):
  """The demo study config (backbone pretraining + base run config) for this tool."""
  from configs import demo
  from heat_jax.data import synthetic
  from heat_jax.study import check_pretrain
  config = demo.get_config(f"model={model},epochs={epochs},pretrain_steps={pretrain_steps},"
                           f"pretrain_images={pretrain_images}")
  b = config.base
  b.data.task = task
  b.data.num_train = num_train
  b.data.num_val = num_train // 5         # train800 + val200 for the demo's 1000
  b.data.num_test = num_test
  b.data.synthetic_seed = config.study.data_seed
  b.train.batch_size = batch_size
  b.seed = seed
  b.optim.lr = lr
  if task not in synthetic.GENERATORS:
    raise ConfigError(f"--task={task!r} is not a synthetic task; use one of "
                      f"{', '.join(synthetic.DOWNSTREAM_TASKS)}")
  if lr <= 0 or not math.isfinite(lr):
    raise ConfigError(f"--lr must be > 0, got {lr}")
  if batch_size < 1 or batch_size > num_train:
    raise ConfigError(f"--batch_size={batch_size} must be in [1, --num_train={num_train}]")
  synthetic.check_config(b.data)
  check_pretrain(config.pretrain)
  return config


# ----------------------------------------------------------------------------- run


def run(workdir: str, *, task: str = "texture", parts: Sequence[str] = ("attention", "mlp"),
        dims: Sequence[int] = (100, 200), log: Log = print, **options: Any) -> dict:
  """Measures every part's reference and subspace curve; writes the three files."""
  from heat_jax import checkpoints, experiment, study
  from heat_jax.data import build_task
  from heat_jax.models import model_info
  from heat_jax.tools import subspace

  start = time.time()
  parts = list(parts)
  unknown = [p for p in parts if p not in subspace.PARTS]
  if unknown:
    raise ConfigError(f"--parts: unknown {', '.join(unknown)}; use attention, mlp")
  config = study_config(task=task, **options)
  b = config.base
  backbone = study.pretrained_backbone(config)
  data = build_task(b.data, image_size=b.model.image_size,
                    auto_value_range=model_info(b.model.name).value_range)
  model, _ = experiment.build_model(b, data.num_classes)
  params = checkpoints.load_pretrained(backbone, model, rng=jax.random.key(b.seed))
  sizes = {p: subspace.part_size(params, p) for p in parts}

  def timed(label: str, fn: Callable[[], float]) -> tuple[float, float]:
    tic = time.time()
    acc = fn()
    log(f"[intrinsic_dim] {label:<28} test top-1 {acc:.3f}  ({time.time() - tic:.0f}s)")
    return acc, round(time.time() - tic, 1)

  probe, _ = timed("head only (d = 0)", lambda: subspace.fit(
      model, params, subspace.direct_mask(params, None), b, data))
  results: dict[str, Any] = {
      "task": task, "model": b.model.name, "backbone": backbone, "epochs": b.train.epochs,
      "lr": b.optim.lr, "seed": b.seed, "num_train": data.train.num_examples,
      "num_test": data.test.num_examples, "fraction": FRACTION, "head_only": probe,
      "parts": {}}
  for part in parts:
    full, secs = timed(f"{part}: full fine-tuning", lambda: subspace.fit(
        model, params, subspace.direct_mask(params, part), b, data))
    curve = []
    for d in dims:
      wrapped = subspace.subspace_setup(model, params, part, d, seed=b.seed)
      acc, s = timed(f"{part}: d = {d}", lambda: subspace.fit(*wrapped, b, data))
      curve.append({"d": d, "test_top1": acc, "seconds": s})
    results["parts"][part] = {
        "num_params": sizes[part], "full_top1": full, "full_seconds": secs,
        "target": FRACTION * full, "curve": curve,
        "d90": d90(full, [(c["d"], c["test_top1"]) for c in curve])}
  results["wall_time_s"] = round(time.time() - start, 1)
  write_outputs(workdir, results)
  log("\n" + format_table(results))
  log(f"[intrinsic_dim] {results['wall_time_s']:.0f}s; wrote {workdir}/intrinsic_dim"
      ".{json,md,png}")
  return results


# ----------------------------------------------------------------------------- outputs


def format_table(results: dict) -> str:
  """Markdown: one row per submodule type, test top-1 % per d, and d90."""
  parts = results["parts"]
  dims = [c["d"] for c in next(iter(parts.values()))["curve"]]
  lines = [f"Intrinsic dimension on `{results['task']}` ({results['model']}, "
           f"{results['epochs']} epochs, seed {results['seed']}); test top-1 %; head only "
           f"(d = 0): {100 * results['head_only']:.1f}.", "",
           "| submodule | params | full FT | 90 % target | "
           + " | ".join(f"d={d}" for d in dims) + " | d90 |",
           "|---" * (len(dims) + 5) + "|"]
  for part, r in parts.items():
    cells = " | ".join(f"{100 * c['test_top1']:.1f}" for c in r["curve"])
    lines.append(f"| {part} | {r['num_params']:,} | {100 * r['full_top1']:.1f} | "
                 f"{100 * r['target']:.1f} | {cells} | "
                 f"{r['d90'] if r['d90'] is not None else '-'} |")
  return "\n".join(lines) + "\n"


def plot(path: str | os.PathLike, results: dict) -> None:
  """Test top-1 against d (log axis) per part, its 90 % target dashed, d90 circled."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(figsize=(6.4, 4.2), dpi=100)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  for i, (part, r) in enumerate(results["parts"].items()):
    color = f"C{i}"
    ds = [c["d"] for c in r["curve"]]
    ax.plot(ds, [100 * c["test_top1"] for c in r["curve"]], "o-", color=color,
            label=f"{part} subspace ({r['num_params']:,} params)")
    ax.axhline(100 * r["target"], color=color, linestyle="--", linewidth=1,
               label=f"{part}: 90 % of full FT ({100 * r['full_top1']:.1f})")
    if r["d90"] is not None:
      acc = next(c["test_top1"] for c in r["curve"] if c["d"] == r["d90"])
      ax.plot([r["d90"]], [100 * acc], "o", markersize=13, markerfacecolor="none",
              color=color)
  ax.axhline(100 * results["head_only"], color="0.5", linestyle=":", linewidth=1,
             label="head only (d = 0)")
  ax.set_xscale("log")
  ax.set_xlabel("subspace dimension d")
  ax.set_ylabel("test top-1 (%)")
  ax.set_title(f"intrinsic dimension: {results['model']} on {results['task']}", fontsize=10)
  ax.legend(fontsize=7)
  fig.tight_layout()
  with atomic_open(Path(path), "wb") as f:
    fig.savefig(f, format="png")


def write_outputs(workdir: str, results: dict) -> None:
  os.makedirs(workdir, exist_ok=True)
  plot(os.path.join(workdir, "intrinsic_dim.png"), results)
  write_text(os.path.join(workdir, "intrinsic_dim.md"), format_table(results))
  write_json(os.path.join(workdir, "intrinsic_dim.json"), results)   # last: the run is done


# ----------------------------------------------------------------------------- CLI


def run_cli(argv: Sequence[str]) -> int:
  """Parses `argv` (argv[0] = program) and runs; returns the exit code."""
  code = absl_cli.parse_own_flags(FLAGS, argv, doc=__doc__, example="--task=texture",
                                  workdir_example="workdirs/intrinsic_dim")
  if code is not None:
    return code
  try:
    run(FLAGS.workdir, task=FLAGS.task, parts=parse_list(FLAGS.parts, "parts"),
        dims=parse_dims(FLAGS.dims), model=FLAGS.model, epochs=FLAGS.epochs,
        seed=FLAGS.seed, lr=FLAGS.lr, pretrain_steps=FLAGS.pretrain_steps,
        pretrain_images=FLAGS.pretrain_images, num_train=FLAGS.num_train,
        num_test=FLAGS.num_test, batch_size=FLAGS.batch_size)
  except UserError as e:
    return absl_cli.fail(e.one_line())
  except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    return 130
  return 0


if __name__ == "__main__":
  sys.exit(run_cli(sys.argv))
