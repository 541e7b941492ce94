"""The results table of a sweep, from the run directories under one workdir.

Each finished run holds results.json with at least: task, method, seed, test_top1 (final
epoch), val_top1 (held-out val only, else null), trainable_params,
trainable_params_no_head, wall_time_s. Accuracies are fractions in [0, 1]; the tables
show percentages. No number chosen on test is shown (no best-epoch column). A run that
failed holds failed.json (task, method, seed, error) until it succeeds. `collect(workdir)`
writes workdir/results.md (one table per metric, the values chosen by tuning when
recipes.json exists, then the failed runs) and results.csv. Tuning runs (workdir/tune/)
are not in the tables. VTAB-1k averages appear only when VTAB-1k tasks were run.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from heat_jax.data.vtab_tasks import GROUP_SHORT, GROUPS, TASK_NAMES, TASKS, tasks_in_group
from heat_jax.errors import DataError
from heat_jax.io_utils import write_text

RESULTS_FILE = "results.json"
FAILED_FILE = "failed.json"
TUNE_DIR = "tune"
RECIPES_FILE = "recipes.json"
LOG_FILE = "log.txt"
REQUIRED_KEYS = ("task", "method", "seed", "test_top1")
METRICS = {
    "test_top1": "Final test top-1 (VTAB protocol: last epoch)",
    "val_top1": "Held-out validation top-1 (final epoch; runs whose val is not trained on)",
}


def load_results(workdir: str | Path) -> list[dict[str, Any]]:
  """Every results.json under `workdir`, validated; DataError names a bad file."""
  records, seen = [], {}
  for path in sorted(Path(workdir).rglob(RESULTS_FILE)):
    if path.relative_to(workdir).parts[0] == TUNE_DIR:
      continue      # tuning runs (train800 -> val200) choose values; they are not results
    try:
      record = json.loads(path.read_text())
    except (OSError, ValueError) as e:
      raise DataError(f"cannot read {path}: {e}; fix or delete the file") from None
    if not isinstance(record, dict):
      raise DataError(f"{path} is not a JSON object; fix or delete the file")
    missing = [k for k in REQUIRED_KEYS if record.get(k) is None]
    if missing:
      raise DataError(f"{path} lacks {', '.join(missing)}; fix or delete the file")
    for metric in METRICS:
      value = record.get(metric)
      if value is not None and not (isinstance(value, (int, float)) and 0 <= value <= 1):
        raise DataError(f"{path}: {metric}={value!r} is not a fraction in [0, 1]")
    key = (record["task"], record["method"], int(record["seed"]))
    if key in seen:
      raise DataError(f"{path} and {seen[key]} both hold {key[0]}/{key[1]}/seed{key[2]}; "
                      "delete one")
    seen[key] = path
    records.append({**record, "_path": str(path)})
  return records


@dataclasses.dataclass
class Stat:
  """Mean and sample std (None for one value) of a metric, in percent."""

  mean: float
  std: Optional[float]
  n: int

  @classmethod
  def of(cls, values: Sequence[float]) -> "Stat":
    v = np.asarray(values, np.float64) * 100.0
    return cls(float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else None, len(v))

  def text(self) -> str:
    return f"{self.mean:.2f}" if self.std is None else f"{self.mean:.2f} ± {self.std:.2f}"


def _mean(values: Sequence[Any]) -> Optional[float]:
  values = [float(v) for v in values if v is not None]
  return float(np.mean(values)) if values else None


def _aggregate(per_task: dict[str, dict[int, float]], tasks: Sequence[str],
               combine: Callable[[dict[str, float]], float]) -> Optional[Stat]:
  """Aggregate of per-task seed means; its std comes from per-seed aggregates when every
  covered task has that seed (otherwise the std is omitted)."""
  covered = [t for t in tasks if t in per_task]
  if not covered:
    return None
  mean = combine({t: float(np.mean(list(per_task[t].values()))) for t in covered})
  common = set.intersection(*(set(per_task[t]) for t in covered))
  per_seed = [combine({t: per_task[t][s] for t in covered}) for s in sorted(common)]
  std = float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else None
  return Stat(mean * 100.0, None if std is None else std * 100.0, len(per_seed))


def _group_mean(values: dict[str, float]) -> float:
  means = [np.mean([values[t] for t in tasks_in_group(g) if t in values]) for g in GROUPS
           if any(t in values for t in tasks_in_group(g))]
  return float(np.mean(means))


def _coverage(tasks: Sequence[str]) -> str:
  return ", ".join(f"{GROUP_SHORT[g]} {sum(t in tasks for t in tasks_in_group(g))}/"
                   f"{len(tasks_in_group(g))}" for g in GROUPS)


def summarize(records: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
  """Per method: per-task `Stat`s for each metric, the aggregates, parameter counts."""
  out: dict[str, dict[str, Any]] = {}
  for method in sorted({r["method"] for r in records}):
    rows = [r for r in records if r["method"] == method]
    tasks = [t for t in TASK_NAMES if any(r["task"] == t for r in rows)]
    extra = sorted({r["task"] for r in rows} - set(TASK_NAMES))
    summary: dict[str, Any] = {
        "tasks": tasks, "extra_tasks": extra, "metrics": {},
        "trainable_params": _mean([r.get("trainable_params") for r in rows]),
        "trainable_params_no_head": _mean([r.get("trainable_params_no_head") for r in rows]),
        "wall_time_s": _mean([r.get("wall_time_s") for r in rows]),
        "params_by_task": {t: _mean([r.get("trainable_params") for r in rows if r["task"] == t])
                           for t in tasks + extra},
    }
    for metric in METRICS:
      per_task: dict[str, dict[int, float]] = {}
      for r in rows:
        if r.get(metric) is not None:
          per_task.setdefault(r["task"], {})[int(r["seed"])] = float(r[metric])
      if not per_task:
        continue
      stats = {t: Stat.of(list(v.values())) for t, v in per_task.items()}
      vtab = [t for t in TASK_NAMES if t in per_task]
      groups = {g: _aggregate(per_task, tasks_in_group(g), lambda v: float(np.mean(list(
          v.values())))) for g in GROUPS}
      summary["metrics"][metric] = {
          "per_task": stats,
          "tasks": vtab,
          "mean19": _aggregate(per_task, TASK_NAMES, lambda v: float(np.mean(list(v.values())))),
          "group_mean": _aggregate(per_task, TASK_NAMES, _group_mean),
          "groups": groups,
          "mean19_label": ("mean-19" if len(vtab) == len(TASK_NAMES)
                           else f"mean of {len(vtab)}/{len(TASK_NAMES)} tasks"),
          "group_mean_label": ("group mean" if len(vtab) == len(TASK_NAMES)
                               else f"group mean ({_coverage(vtab)})"),
      }
    out[method] = summary
  return out


def _fmt(stat: Optional[Stat], covered: int = 0, total: int = 0) -> str:
  """`mean ± std`, suffixed `(covered/total)` when an aggregate misses tasks."""
  if stat is None:
    return "-"
  return stat.text() + (f" ({covered}/{total})" if covered < total else "")


def _millions(value: Optional[float]) -> str:
  return "-" if value is None else f"{value / 1e6:.3f}"


def render_markdown(summary: dict[str, dict[str, Any]]) -> str:
  """One table per metric: methods x (params, 19 tasks, group means, mean-19, group mean)."""
  extra = sorted({t for s in summary.values() for t in s["extra_tasks"]})
  vtab = any(s["tasks"] for s in summary.values())
  if vtab:
    lines = ["# VTAB-1k results", "",
             "Top-1 accuracy in %, mean ± sample std over seeds. mean-19 = mean of the 19 "
             "task accuracies; group mean = mean of the Natural / Specialized / Structured "
             "group means (different conventions: never compare across them). Missing tasks "
             "are '-' and left out of the means, which say how many tasks they cover.", ""]
  else:
    lines = ["# Results", "", "Top-1 accuracy in %, mean ± sample std over seeds.", ""]
  task_cols = (list(TASK_NAMES) if vtab else []) + extra
  for metric, title in METRICS.items():
    methods = [m for m, s in summary.items() if metric in s["metrics"]]
    if not methods:
      continue
    header = (["method", "params (M)", "params no head (M)"] + task_cols +
              ([f"{GROUP_SHORT[g]} mean" for g in GROUPS] + ["mean-19", "group mean"]
               if vtab else []))
    lines += [f"## {title}", "", "| " + " | ".join(header) + " |",
              "|" + "|".join("---" for _ in header) + "|"]
    notes = []
    for m in methods:
      s, ms = summary[m], summary[m]["metrics"][metric]
      cells = [m, _millions(s["trainable_params"]), _millions(s["trainable_params_no_head"])]
      cells += [_fmt(ms["per_task"].get(t)) for t in task_cols]
      if vtab:
        covered = {g: sum(t in ms["tasks"] for t in tasks_in_group(g)) for g in GROUPS}
        cells += [_fmt(ms["groups"][g], covered[g], len(tasks_in_group(g))) for g in GROUPS]
        cells += [_fmt(ms["mean19"], len(ms["tasks"]), len(TASK_NAMES)),
                  _fmt(ms["group_mean"], len(ms["tasks"]), len(TASK_NAMES))]
      lines.append("| " + " | ".join(cells) + " |")
      if vtab and len(ms["tasks"]) != len(TASK_NAMES):
        notes.append(f"- {m}: {ms['mean19_label']}; {ms['group_mean_label']}.")
    lines += [""] + notes + ([""] if notes else [])
  if extra and vtab:
    lines += [f"Tasks outside VTAB-1k ({', '.join(extra)}) are shown but not averaged.", ""]
  return "\n".join(lines)


def render_recipes(recipes: dict[str, dict[str, dict[str, Any]]]) -> str:
  """The values the tuning stage chose (best held-out val top-1 on train800 -> val200)."""
  if not recipes:
    return ""
  lines = ["## Chosen hyper-parameters", "",
           "Per task and method, the grid point with the best val200 top-1 after training "
           "on train800 (ties: the earlier point); the final runs above used it.", "",
           "| task | method | values |", "|---|---|---|"]
  for task, per in recipes.items():
    for method, values in per.items():
      text = ", ".join(f"{k}={v}" for k, v in values.items())
      lines.append(f"| {task} | {method} | {text} |")
  return "\n".join(lines + [""])


def render_csv(summary: dict[str, dict[str, Any]]) -> str:
  """Long format: one row per (method, task or aggregate); accuracies in percent."""
  cols = ["method", "task", "group", "num_tasks"]
  for metric in METRICS:
    cols += [f"{metric}_pct_mean", f"{metric}_pct_std", f"{metric}_num_seeds"]
  cols += ["trainable_params", "trainable_params_no_head"]
  buf = io.StringIO()
  writer = csv.writer(buf, lineterminator="\n")
  writer.writerow(cols)

  def num(x: Optional[float], digits: int = 4) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"

  for m, s in summary.items():
    rows: list[tuple[str, str, str, Callable[[dict], Optional[Stat]], Optional[float]]] = []
    for t in s["tasks"] + s["extra_tasks"]:
      group = TASKS[t].group if t in TASKS else ""
      rows.append((t, group, "1", lambda ms, t=t: ms["per_task"].get(t), s["params_by_task"][t]))
    for g in GROUPS if s["tasks"] else ():    # VTAB-1k aggregates only for VTAB tasks
      rows.append((f"{g}_mean", g, str(sum(t in s["tasks"] for t in tasks_in_group(g))),
                   lambda ms, g=g: ms["groups"][g], None))
    if s["tasks"]:
      rows.append(("mean19", "", str(len(s["tasks"])), lambda ms: ms["mean19"], None))
      rows.append(("group_mean", "", str(len(s["tasks"])), lambda ms: ms["group_mean"], None))
    for task, group, n, pick, params in rows:
      row = [m, task, group, n]
      for metric in METRICS:
        stat = pick(s["metrics"][metric]) if metric in s["metrics"] else None
        row += ([num(stat.mean), num(stat.std), str(stat.n)] if stat else ["", "", ""])
      row += [num(params if params is not None else s["trainable_params"], 0),
              num(s["trainable_params_no_head"], 0)]
      writer.writerow(row)
  return buf.getvalue()


def load_failures(workdir: str | Path) -> list[dict[str, Any]]:
  """Every failed.json under `workdir` whose job has not finished since."""
  failures = []
  for path in sorted(Path(workdir).rglob(FAILED_FILE)):
    if (path.parent / RESULTS_FILE).exists():
      continue
    try:
      record = json.loads(path.read_text())
    except (OSError, ValueError) as e:
      raise DataError(f"cannot read {path}: {e}; fix or delete the file") from None
    if not isinstance(record, dict) or any(k not in record for k in ("task", "method", "seed")):
      raise DataError(f"{path} lacks task, method or seed; fix or delete the file")
    failures.append({**record, "_path": str(path)})
  return failures


def render_failures(failures: Sequence[dict[str, Any]], workdir: str | Path) -> str:
  """The 'Failed runs' section of results.md (empty without failures)."""
  if not failures:
    return ""
  lines = ["## Failed runs", "",
           f"{len(failures)} run(s) failed and are not in the tables above. Rerunning the sweep "
           "retries them; each run dir's log.txt has the full output.", "",
           "| task | method | seed | error | log |", "|---|---|---|---|---|"]
  for f in failures:
    log = Path(f["_path"]).parent / str(f.get("log") or LOG_FILE)
    try:
      log = log.relative_to(workdir)
    except ValueError:
      pass
    error = " ".join(str(f.get("error", "")).split()).replace("|", "\\|")
    lines.append(f"| {f['task']} | {f['method']} | {f['seed']} | {error} | {log} |")
  return "\n".join(lines + [""])


def collect(workdir: str | Path) -> dict[str, dict[str, Any]]:
  """Reads every results.json under `workdir`, writes results.csv and results.md there.

  results.md ends with the runs that failed (failed.json without results.json).
  """
  records = load_results(workdir)
  failures = load_failures(workdir)
  if not records and not failures:
    raise DataError(f"no {RESULTS_FILE} under {workdir}; run the sweep first")
  summary = summarize(records)
  write_text(Path(workdir) / "results.csv", render_csv(summary))
  markdown = render_markdown(summary)
  recipes_path = Path(workdir) / RECIPES_FILE
  if recipes_path.exists():
    try:
      recipes = json.loads(recipes_path.read_text())
    except (OSError, ValueError) as e:
      raise DataError(f"cannot read {recipes_path}: {e}; fix or delete the file") from None
    markdown = markdown.rstrip("\n") + "\n\n" + render_recipes(recipes)
  if failures:
    markdown = markdown.rstrip("\n") + "\n\n" + render_failures(failures, workdir)
  write_text(Path(workdir) / "results.md", markdown)
  return summary
