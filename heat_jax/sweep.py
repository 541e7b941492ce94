"""VTAB-1k sweeps, run in parallel, and the results table.

  python -m heat_jax.sweep --tasks=all --methods=heat,lora --seeds=0,1,2 --workdir=DIR \\
      [--parallel=8] [--config_args=rank=4,epochs=50] [--config=vtab]
  python -m heat_jax.sweep --workdir=DIR --collect_only      # only rebuild the tables

Every (task, method, seed) is one job in its own process, exactly the command a user
would type:

  heat-jax --config=<config>:task=<task>,method=<method>,<config_args> \\
      --config.seed=<seed> --workdir=DIR/<task>/<method>/seed<seed>

(run as `python run.py` from a source checkout, else as `python -m heat_jax.cli`)

with its output appended to DIR/<task>/<method>/seed<seed>/log.txt. Up to --parallel
jobs run at once: on a GPU host each job sees its own share of the visible GPUs
(CUDA_VISIBLE_DEVICES; --parallel=8 on 8 GPUs = one GPU per job), on a CPU host they
share the cores. A TPU VM runs one job at a time over all its chips (--parallel=1);
to use several TPU hosts, run one sweep per host on disjoint --tasks.

Rerunning the same command skips finished jobs (results.json exists), resumes interrupted
ones from their checkpoints and retries failed ones. A failed job leaves failed.json
(its one-line error) in its run dir until it succeeds; results.md lists it. The exit
code is 0 when every job finished, 1 when some failed, 2 for bad flags or configs.
SIGTERM to the sweep (a preempted VM) is passed on to the running jobs, which save a
checkpoint and exit 75; they are recorded as interrupted, not failed; the sweep exits 75.

--config picks the config: a packaged name as for heat-jax (default `vtab`; `smoke`,
...) or a file; the job's task and method go into its `:args` and the seed into
`config.seed`, so any config built on `base_config` with `task` and `method`
arguments works, e.g. `smoke` (a random ViT-micro on synthetic tasks, seconds per job):

  python -m heat_jax.sweep --config=smoke --tasks=texture,count \\
      --methods=heat,linear --seeds=0 --workdir=/tmp/smoke_sweep --parallel=2

`--tasks` accepts `all` and the group names natural, specialized and structured (the
VTAB-1k task ids); task ids are checked against VTAB-1k only for the vtab config.
The run directory does not encode --config_args: use one DIR per setting.

Tuned protocol (`--grid`, repeatable: the grid is the product of the flags, the first
flag varying slowest):

  python -m heat_jax.sweep --config=smoke --tasks=texture,count \
      --methods=heat,lora --seeds=0,1 --grid=optim.lr=1e-3,1e-2 --workdir=DIR

  1. tune: every grid point of every (task, method) trains on the tuning splits
     (train800 -> val200, `heat_jax.data.splits.tuning_splits`) with the first seed,
     in DIR/tune/<task>/<method>/point<i>/seed<s>;
  2. select: per (task, method) the point with the best val top-1 (final epoch; ties:
     the earlier point) -> DIR/recipes.json {task: {method: {field: value}}};
  3. final: every seed trains on train800val200 with the chosen values and is tested
     on test, in DIR/<task>/<method>/seed<s>; results.md gives mean ± std over seeds.
Test numbers never choose anything. A (task, method) whose tuning runs did not all
finish gets no final runs (reported as failed).

The tables come from `heat_jax.sweep_table.collect`.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import glob
import importlib.util
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from absl import app, flags

from heat_jax import absl_cli, config_names, preemption
from heat_jax.data.splits import tuning_splits
from heat_jax.data.vtab_tasks import GROUPS, TASK_NAMES, TASKS, tasks_in_group
from heat_jax.errors import ConfigError, UserError
from heat_jax.io_utils import read_json, write_json
from heat_jax.methods import available_methods
from heat_jax.sweep_table import FAILED_FILE, LOG_FILE, RESULTS_FILE, collect

DEFAULT_CONFIG = "vtab"   # the packaged config (heat_jax/configs/vtab.py)
TUNE_DIR = "tune"
RECIPES_FILE = "recipes.json"
Runner = Callable[[Any, str], Any]
# Exit codes of a job that was interrupted (SIGINT: run.py's KeyboardInterrupt exit; SIGTERM:
# its preemption exit, heat_jax.preemption) rather than failed: it resumes when rerun.
INTERRUPTED = (130, -signal.SIGINT, preemption.EXIT_CODE, -signal.SIGTERM)


class Terminated(KeyboardInterrupt):
  """The sweep got SIGTERM (e.g. its VM is preempted): its jobs get SIGTERM too."""


def _on_sigterm(signum: int, frame: Any) -> None:
  raise Terminated
# How long an interrupted job may take to write its checkpoint and exit before it is killed.
STOP_GRACE_S = 60.0


# ----------------------------------------------------------------------------- planning


def repo_root() -> Path:
  """The folder above the package: a source checkout (with `run.py` and `configs/`) or,
  installed, site-packages."""
  return Path(__file__).resolve().parents[1]


def run_dir(workdir: str | Path, task: str, method: str, seed: int) -> Path:
  return Path(workdir) / task / method / f"seed{seed}"


def parse_tasks(spec: str, vtab: bool = True) -> list[str]:
  """`all`, group names (natural / specialized / structured) or task ids, comma-separated.

  `vtab=False` (configs other than configs/vtab.py) passes unknown ids through: the
  config decides what a task is.
  """
  out: list[str] = []
  for item in (s.strip() for s in spec.split(",") if s.strip()):
    names = (list(TASK_NAMES) if item == "all" else
             tasks_in_group(item) if item in GROUPS else [item])
    for name in names:
      if vtab and name not in TASKS:
        raise ConfigError(f"--tasks: unknown task {name!r}; valid: all, {', '.join(GROUPS)}, "
                          f"{', '.join(TASK_NAMES)}")
      if name not in out:
        out.append(name)
  if not out:
    raise ConfigError("--tasks is empty; name tasks (e.g. --tasks=dtd,svhn) or use all")
  return out


def parse_seeds(spec: str) -> list[int]:
  try:
    seeds = [int(s) for s in spec.split(",") if s.strip()]
  except ValueError:
    raise ConfigError(f"--seeds={spec!r} must be comma-separated integers, e.g. 0,1,2") from None
  if not seeds:
    raise ConfigError("--seeds is empty; e.g. --seeds=0,1,2")
  return seeds


def parse_methods(spec: str) -> list[str]:
  methods = list(dict.fromkeys(m.strip() for m in spec.split(",") if m.strip()))
  if not methods:
    raise ConfigError("--methods is empty; e.g. --methods=heat,lora")
  return methods


def resolve_config(path: str | Path) -> Path:
  """The config file: a packaged config name (`vtab`, `smoke`, ...), or a file relative to
  the current directory or to the checkout."""
  if ":" in str(path):
    raise ConfigError(f"--config={path}: give only the config; the sweep sets task, "
                      "method and seed, and --config_args adds the other arguments")
  if config_names.is_name(str(path)) and not Path(path).is_file():
    return Path(config_names.resolve(str(path))).resolve()   # ConfigError when unknown
  for candidate in (Path(path), repo_root() / path):
    if candidate.is_file():
      return candidate.resolve()
  raise ConfigError(f"--config={path}: no such file; e.g. --config=vtab, --config=smoke "
                    "(packaged configs) or --config=path/to/my_config.py")


def is_vtab_config(path: str | Path) -> bool:
  """Whether `path` is the VTAB-1k config (packaged, or the checkout's configs/vtab.py)."""
  return resolve_config(path) in (config_names.config_dir().resolve() / "vtab.py",
                                  (repo_root() / "configs" / "vtab.py").resolve())


def load_get_config(path: str | Path) -> Callable[[str], Any]:
  """`get_config` of a config file, loaded the way run.py's --config loads it."""
  path = resolve_config(path)
  root = str(repo_root())
  if root not in sys.path:
    sys.path.insert(0, root)   # config files import `configs.common`
  spec = importlib.util.spec_from_file_location(f"_heat_jax_sweep_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except ImportError as e:
    raise ConfigError(f"cannot load {path}: {e}; run the sweep from the heat_jax repository "
                      "root") from None
  if not callable(getattr(module, "get_config", None)):
    raise ConfigError(f"{path} has no get_config(arg); pass a config like --config=vtab "
                      "or a file defining get_config(arg)")
  return module.get_config


@dataclasses.dataclass(frozen=True)
class Job:
  """One (task, method, seed) run: the config file's `:arg`, its config and its run dir."""

  task: str
  method: str
  seed: int
  arg: str
  config: Any
  out: Path
  overrides: tuple[tuple[str, Any], ...] = ()   # config fields set after get_config
  stage: str = ""                               # "tune/point<i>" for tuning runs

  @property
  def name(self) -> str:
    where = f"{self.stage}/" if self.stage else ""
    return f"{where}{self.task}/{self.method}/seed{self.seed}"


def _check_config_args(config_args: str) -> None:
  for key in ("task", "method", "seed"):
    if any(a.split("=")[0].strip() == key for a in config_args.split(",")):
      raise ConfigError(f"--config_args must not set {key}; use --tasks / --methods / --seeds")


def make_job(get_config: Callable[[str], Any], task: str, method: str, seed: int,
             out: Path, *, config_args: str = "", config: str | Path = DEFAULT_CONFIG,
             overrides: Mapping[str, Any] | None = None, stage: str = "") -> Job:
  """One job: the config of `task`, `method`, `seed` with `overrides` applied."""
  arg = ",".join(p for p in (f"task={task}", f"method={method}", config_args) if p)
  cfg = get_config(arg)
  if "seed" not in cfg:
    raise ConfigError(f"{config} builds a config without a seed field; the sweep sets "
                      "config.seed (build it on configs.common.base_config)")
  cfg.seed = seed
  overrides = dict(overrides or {})
  if overrides:
    cfg.update_from_flattened_dict(overrides)
  return Job(task, method, seed, arg, cfg, out, tuple(overrides.items()), stage)


def plan(tasks: Sequence[str], methods: Sequence[str], seeds: Sequence[int],
         workdir: str | Path, *, config_args: str = "",
         config: str | Path = DEFAULT_CONFIG,
         overrides: Optional[Mapping[tuple[str, str], Mapping[str, Any]]] = None
         ) -> list[Job]:
  """Every job of the grid; builds all configs first, so a bad argument fails at once.

  `overrides[(task, method)]` are config fields set on that pair's jobs (chosen values).
  """
  _check_config_args(config_args)
  get_config = load_get_config(config)
  return [make_job(get_config, task, method, seed, run_dir(workdir, task, method, seed),
                   config_args=config_args, config=config,
                   overrides=(overrides or {}).get((task, method)))
          for task in tasks for method in methods for seed in seeds]


# ----------------------------------------------------------------------------- grid


def _value(text: str, default: Any) -> Any:
  """A grid value in the type of the config field it replaces."""
  text = text.strip()
  try:
    if isinstance(default, bool):
      if text.lower() not in ("true", "false", "1", "0"):
        raise ValueError
      return text.lower() in ("true", "1")
    if isinstance(default, int):
      return int(text)
    if isinstance(default, float):
      return float(text)
  except ValueError:
    raise ConfigError(f"--grid value {text!r} is not a {type(default).__name__}") from None
  return text


def parse_grid(specs: Sequence[str], template: Any) -> list[dict[str, Any]]:
  """`['optim.lr=1e-3,1e-2', 'optim.weight_decay=0,1e-4']` -> the product of the values,
  the first flag varying slowest; fields are checked against `template` (a config)."""
  flat = _flat(template.to_dict())
  axes: list[tuple[str, list[Any]]] = []
  for spec in specs:
    field, sep, values = spec.partition("=")
    field = field.strip()
    if not sep or not values.strip():
      raise ConfigError(f"--grid={spec!r}: use field=v1,v2 (e.g. --grid=optim.lr=1e-3,1e-2)")
    if field not in flat:
      raise ConfigError(f"--grid={spec!r}: the config has no field {field!r}")
    if field in ("seed",) or field.startswith(("data.",)):
      raise ConfigError(f"--grid={spec!r}: {field} is set by the protocol, not tuned")
    if any(f == field for f, _ in axes):
      raise ConfigError(f"--grid: {field} is given twice")
    vals = [_value(v, flat[field]) for v in values.split(",") if v.strip()]
    if len(set(map(repr, vals))) != len(vals):
      raise ConfigError(f"--grid={spec!r} repeats a value")
    axes.append((field, vals))
  points: list[dict[str, Any]] = [{}]
  for field, vals in axes:
    points = [{**p, field: v} for p in points for v in vals]
  return points


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
  out: dict[str, Any] = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def tune_dir(workdir: str | Path, task: str, method: str, point: int, seed: int) -> Path:
  return Path(workdir) / TUNE_DIR / task / method / f"point{point}" / f"seed{seed}"


def plan_tuning(tasks: Sequence[str], methods: Sequence[str], seed: int,
                workdir: str | Path, points: Sequence[Mapping[str, Any]], *,
                config_args: str = "", config: str | Path = DEFAULT_CONFIG) -> list[Job]:
  """One tuning job per (task, method, grid point): the point on the tuning splits."""
  _check_config_args(config_args)
  get_config = load_get_config(config)
  jobs = []
  for task in tasks:
    for method in methods:
      arg = ",".join(p for p in (f"task={task}", f"method={method}", config_args) if p)
      splits = tuning_splits(get_config(arg).data)
      for i, point in enumerate(points):
        jobs.append(make_job(get_config, task, method, seed,
                             tune_dir(workdir, task, method, i, seed),
                             config_args=config_args, config=config,
                             overrides={**point, **splits}, stage=f"tune/point{i}"))
  return jobs


def select(tasks: Sequence[str], methods: Sequence[str], seed: int, workdir: str | Path,
           points: Sequence[Mapping[str, Any]]) -> tuple[dict[str, dict[str, dict]], list[str]]:
  """(recipes {task: {method: point}}, pairs that cannot be chosen): the best val top-1
  of the tuning runs, ties to the earlier grid point; test numbers are never read."""
  recipes: dict[str, dict[str, dict]] = {}
  missing = []
  for task in tasks:
    for method in methods:
      scores = []
      for i in range(len(points)):
        path = tune_dir(workdir, task, method, i, seed) / RESULTS_FILE
        r = read_json(path) if path.exists() else {}
        if r.get("val_top1") is None or not r.get("val_held_out", False):
          scores = None
          break
        scores.append(float(r["val_top1"]))
      if scores is None:
        missing.append(f"{task}/{method}")
        continue
      best = max(range(len(points)), key=lambda i: (scores[i], -i))
      recipes.setdefault(task, {})[method] = dict(points[best])
  return recipes, missing


# ----------------------------------------------------------------------------- devices


def visible_gpus(environ: Mapping[str, str] = os.environ) -> list[str]:
  """GPU ids a child may be given: CUDA_VISIBLE_DEVICES if set, else nvidia-smi's list.

  The parent never initialises JAX: that would take the GPUs' memory from the jobs.
  """
  if environ.get("JAX_PLATFORMS", "").strip().lower() == "cpu":
    return []
  if "CUDA_VISIBLE_DEVICES" in environ:
    ids = [d.strip() for d in environ["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()]
    return [] if ids in ([], ["-1"]) else ids
  if shutil.which("nvidia-smi") is None:
    return []
  try:
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60)
  except (OSError, subprocess.SubprocessError):
    return []
  return [str(i) for i, line in enumerate(l for l in out.stdout.splitlines()
                                          if l.startswith("GPU "))]


def is_tpu_host(environ: Mapping[str, str] = os.environ) -> bool:
  if environ.get("JAX_PLATFORMS", "").strip().lower() == "cpu":
    return False
  return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


@dataclasses.dataclass(frozen=True)
class Slot:
  """Where one job runs: a label for the progress lines and the child's extra env."""

  label: str
  env: dict[str, str]


def device_slots(parallel: int, gpus: Sequence[str] = (), tpu: bool = False) -> list[Slot]:
  """`parallel` slots: GPUs split evenly between them, or CPU workers.

  One slot sees every device (the run's mesh spans them all). On GPUs each slot gets
  len(gpus) // parallel of them; a TPU VM's chips cannot be split between processes here.
  """
  if parallel < 1:
    raise ConfigError(f"--parallel={parallel} must be >= 1")
  if parallel == 1:
    return [Slot("all devices", {})]
  if gpus:
    if parallel > len(gpus):
      raise ConfigError(f"--parallel={parallel} but {len(gpus)} GPU(s) are visible; use "
                        f"--parallel<={len(gpus)} (one job per GPU at most)")
    k = len(gpus) // parallel
    groups = [list(gpus[i * k:(i + 1) * k]) for i in range(parallel)]
    return [Slot(("GPU " if k == 1 else "GPUs ") + ",".join(g),
                 {"CUDA_VISIBLE_DEVICES": ",".join(g)}) for g in groups]
  if tpu:
    raise ConfigError(f"--parallel={parallel} on a TPU VM: each job uses all its chips; use "
                      "--parallel=1, or run one sweep per TPU host with disjoint --tasks")
  return [Slot(f"cpu worker {i + 1}", {}) for i in range(parallel)]


# ----------------------------------------------------------------------------- running


def _progress(message: str) -> None:
  print(f"{time.strftime('%H:%M:%S')} sweep {message}", file=sys.stderr, flush=True)


def _duration(seconds: float) -> str:
  m, s = divmod(int(round(seconds)), 60)
  h, m = divmod(m, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def _one_line(text: str, limit: int = 300) -> str:
  text = " ".join(text.split())
  return text if len(text) <= limit else text[:limit - 3] + "..."


def error_line(output: str, returncode: int) -> str:
  """The one-line reason a job failed, from its log and exit status."""
  lines = [l.strip() for l in output.replace("\r", "\n").splitlines() if l.strip()]
  errors = [l for l in lines if l.startswith("error:")]   # run.py's one line for bad input
  last = errors[-1][len("error:"):] if errors else (lines[-1] if lines else "")
  if returncode < 0:
    name = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else ""
    why = f"killed by {name or f'signal {-returncode}'}"
    why += " (out of memory?)" if returncode == -signal.SIGKILL else ""
    return _one_line(f"{why}; last output: {last}" if last else why)
  return _one_line(last or f"exited with code {returncode} without output")


def _record_success(job: Job) -> None:
  (job.out / FAILED_FILE).unlink(missing_ok=True)


def _record_failure(job: Job, error: str, exit_code: Optional[int]) -> None:
  write_json(job.out / FAILED_FILE, {
      "task": job.task, "method": job.method, "seed": job.seed, "error": error,
      "exit_code": exit_code, "log": LOG_FILE,
      "time": datetime.datetime.now().isoformat(timespec="seconds")})


def job_command(job: Job, config: str | Path) -> list[str]:
  """The command line of one job: the checkout's run.py, or (installed) the `heat-jax`
  command's module; both are `heat_jax.cli`."""
  run_py = repo_root() / "run.py"
  program = [str(run_py)] if run_py.is_file() else ["-m", "heat_jax.cli"]
  cmd = [sys.executable, *program,
         f"--config={resolve_config(config)}:{job.arg}", f"--config.seed={job.seed}",
         f"--workdir={job.out.resolve()}"]
  cmd += [f"--config.{field}={value}" for field, value in job.overrides]
  if "train" in job.config and "progress" in job.config.train:
    cmd.append("--config.train.progress=False")   # a progress bar only clutters log.txt
  return cmd


@dataclasses.dataclass
class _Running:
  job: Job
  index: int
  slot: int
  proc: subprocess.Popen
  start: float
  log_offset: int


def _launch(job: Job, index: int, slot: int, slots: Sequence[Slot],
            config: str | Path) -> _Running:
  job.out.mkdir(parents=True, exist_ok=True)
  cmd = job_command(job, config)
  log_path = job.out / LOG_FILE
  with open(log_path, "a") as log:
    offset = log.seek(0, os.SEEK_END)
    log.write(f"=== {datetime.datetime.now().isoformat(timespec='seconds')} {job.name} on "
              f"{slots[slot].label}\n$ {shlex.join(cmd)}\n")
    log.flush()
    # The child holds its own handle on the log; an unbuffered child keeps it current.
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env={**os.environ, **slots[slot].env, "PYTHONUNBUFFERED": "1"})
  return _Running(job, index, slot, proc, time.time(), offset)


def _stop(running: Sequence[_Running], wait_first: float = 0.0,
          sig: int = signal.SIGINT) -> None:
  """Interrupts running jobs (`sig`: SIGINT as Ctrl-C, or SIGTERM: they save a checkpoint
  first) after `wait_first` s; kills stragglers."""
  deadline = time.time() + wait_first
  for r in running:
    try:
      r.proc.wait(timeout=max(deadline - time.time(), 0.01))
    except subprocess.TimeoutExpired:
      r.proc.send_signal(sig)
  deadline = time.time() + STOP_GRACE_S
  for r in running:
    try:
      r.proc.wait(timeout=max(deadline - time.time(), 0.1))
    except subprocess.TimeoutExpired:
      r.proc.kill()
      r.proc.wait()


def _finish(r: _Running, total: int) -> Optional[str]:
  """Bookkeeping of an exited job; returns its error line (None when it finished)."""
  code = r.proc.returncode
  label = f"[{r.index}/{total}] {r.job.name}"
  took = _duration(time.time() - r.start)
  if code == 0 and (r.job.out / RESULTS_FILE).exists():
    _record_success(r.job)
    _progress(f"{label} done in {took}")
    return None
  with open(r.job.out / LOG_FILE, "rb") as log:   # this attempt's tail is enough
    size = log.seek(0, os.SEEK_END)
    log.seek(max(r.log_offset, size - 65536))
    output = log.read().decode(errors="replace")
  if code in INTERRUPTED:
    _progress(f"{label} interrupted after {took}; rerun to resume it")
    return "interrupted"
  error = (error_line(output, code) if code != 0 else
           f"exited with code 0 but wrote no {RESULTS_FILE}")
  _record_failure(r.job, error, code)
  _progress(f"{label} FAILED after {took}: {error} (log: {r.job.out / LOG_FILE})")
  return error


def _run_subprocesses(jobs: Sequence[Job], slots: Sequence[Slot], config: str | Path,
                      fail_fast: bool) -> list[str]:
  """Runs `jobs` as run.py processes, at most one per slot; returns the ones that failed."""
  queue = collections.deque(enumerate(jobs, 1))
  free = list(range(len(slots)))
  running: list[_Running] = []
  failed: list[str] = []
  try:
    while queue or running:
      while queue and free and not (fail_fast and failed):
        index, job = queue.popleft()
        verb = "resume" if (job.out / "checkpoints").exists() else "start"
        r = _launch(job, index, free.pop(0), slots, config)
        _progress(f"[{index}/{len(jobs)}] {verb} {job.name} on {slots[r.slot].label}")
        running.append(r)
      time.sleep(0.2)
      exited = [r for r in running if r.proc.poll() is not None]
      if fail_fast and any(r.proc.returncode != 0 for r in exited):
        queue.clear()
        if len(exited) < len(running):
          _progress("--fail_fast: interrupting the running jobs; rerun to resume them")
          _stop(running)
          exited = list(running)
      for r in exited:
        running.remove(r)
        free.append(r.slot)
        error = _finish(r, len(jobs))
        if error is not None:
          failed.append(r.job.name + (" (interrupted)" if error == "interrupted" else ""))
  except KeyboardInterrupt as e:
    # Ctrl-C in a terminal reached the children too (same process group): they exit by
    # themselves; a SIGINT sent to this process alone is passed on after a moment. A
    # SIGTERM is passed on at once; the jobs are then recorded as interrupted.
    terminated = isinstance(e, Terminated)
    _stop(running, wait_first=0.0 if terminated else 2.0,
          sig=signal.SIGTERM if terminated else signal.SIGINT)
    if terminated:
      for r in running:
        _finish(r, len(jobs))
    raise
  return failed


def _run_in_process(jobs: Sequence[Job], runner: Runner, fail_fast: bool) -> list[str]:
  """Runs `jobs` one after another in this process with `runner(config, workdir)`."""
  failed = []
  for index, job in enumerate(jobs, 1):
    label = f"[{index}/{len(jobs)}] {job.name}"
    _progress(f"{label} start in {job.out}")
    start = time.time()
    try:
      runner(job.config, str(job.out))
    except Exception as e:  # pylint: disable=broad-except
      if fail_fast:
        raise
      error = _one_line(e.one_line() if isinstance(e, UserError) else f"{type(e).__name__}: {e}")
      _record_failure(job, error, None)
      _progress(f"{label} FAILED after {_duration(time.time() - start)}: {error}")
      failed.append(job.name)
      continue
    _record_success(job)
    _progress(f"{label} done in {_duration(time.time() - start)}")
  return failed


def run_sweep(tasks: Sequence[str], methods: Sequence[str], seeds: Sequence[int],
              workdir: str | Path, *, config_args: str = "",
              config: str | Path = DEFAULT_CONFIG, parallel: int = 1, fail_fast: bool = False,
              runner: Optional[Runner] = None, grid: Sequence[str] = ()) -> list[str]:
  """Runs every unfinished (task, method, seed); returns the jobs that did not finish.

  Each job runs as its own run.py process, `parallel` at a time (see `device_slots`).
  `runner(config, workdir)` instead runs the jobs one by one in this process (tests).
  `grid` (the --grid flags): tune, select and run the final protocol (module doc).
  """
  kw = dict(parallel=parallel, fail_fast=fail_fast, runner=runner, config=config)
  if not grid:
    return execute(plan(tasks, methods, seeds, workdir, config_args=config_args,
                        config=config), **kw)
  _check_config_args(config_args)
  template = load_get_config(config)(",".join(
      p for p in (f"task={tasks[0]}", f"method={methods[0]}", config_args) if p))
  points = parse_grid(grid, template)
  tuning = plan_tuning(tasks, methods, seeds[0], workdir, points, config_args=config_args,
                       config=config)
  final_all = plan(tasks, methods, seeds, workdir, config_args=config_args, config=config)
  del final_all   # built only to fail fast on a bad final config before any tuning
  _progress(f"tuning {len(points)} grid point(s) x {len(tasks)} task(s) x {len(methods)} "
            f"method(s) on train800 -> val200 (seed {seeds[0]})")
  failed = execute(tuning, **kw)
  if failed and fail_fast:
    return failed
  recipes, missing = select(tasks, methods, seeds[0], workdir, points)
  write_json(Path(workdir) / RECIPES_FILE, recipes)
  _progress(f"chosen on val200: {recipes} -> {Path(workdir) / RECIPES_FILE}")
  chosen = {(t, m): v for t, per in recipes.items() for m, v in per.items()}
  final = [j for j in plan(tasks, methods, seeds, workdir, config_args=config_args,
                           config=config, overrides=chosen)
           if (j.task, j.method) in chosen]
  failed += [f"{pair} (not tuned: a tuning run did not finish)" for pair in missing]
  return failed + execute(final, **kw)


def execute(jobs: Sequence[Job], *, parallel: int = 1, fail_fast: bool = False,
            runner: Optional[Runner] = None, config: str | Path = DEFAULT_CONFIG
            ) -> list[str]:
  """Runs the unfinished `jobs`; returns those that did not finish."""
  todo = []
  for job in jobs:
    if (job.out / RESULTS_FILE).exists():
      _record_success(job)   # e.g. run by hand since it failed here
    else:
      todo.append(job)
  if len(todo) < len(jobs):
    _progress(f"{len(jobs) - len(todo)} of {len(jobs)} jobs already finished, skipped")
  if not todo:
    return []
  if runner is not None:
    return _run_in_process(todo, runner, fail_fast)
  slots = device_slots(parallel, visible_gpus() if parallel > 1 else [],
                       tpu=parallel > 1 and is_tpu_host())
  return _run_subprocesses(todo, slots, config, fail_fast)


# ----------------------------------------------------------------------------- CLI

# The sweep's own flag set: run.py defines --config and --workdir in absl's global FLAGS
# with other meanings, and tests import both modules into one process.
FLAGS = flags.FlagValues()
flags.DEFINE_string("tasks", "all", "Comma-separated task ids, the groups natural, "
                    "specialized, structured, or all (the 19 VTAB-1k tasks).", flag_values=FLAGS)
flags.DEFINE_string("methods", "heat", "Comma-separated methods: "
                    f"{', '.join(available_methods())}.", flag_values=FLAGS)
flags.DEFINE_string("seeds", "0,1,2", "Comma-separated integer seeds (config.seed).",
                    flag_values=FLAGS)
flags.DEFINE_string("workdir", None, "Sweep directory: runs go to "
                    "<workdir>/<task>/<method>/seed<k>, tables to <workdir>/results.md and "
                    "results.csv. Required.", flag_values=FLAGS)
flags.DEFINE_string("config", DEFAULT_CONFIG, "Config of every job: a packaged name "
                    f"({', '.join(config_names.available())}) or a file; the sweep adds "
                    "task=<task>,method=<method> to its args and sets config.seed. E.g. "
                    "smoke for a seconds-long check.", flag_values=FLAGS)
flags.DEFINE_string("config_args", "", "More args of the config file for every job, e.g. "
                    "rank=4,epochs=50 (not task, method or seed).", flag_values=FLAGS)
flags.DEFINE_integer("parallel", 1, "Jobs at once, each in its own process: on GPUs each "
                     "job gets its share of the visible GPUs (8 on 8 GPUs = one each); on "
                     "CPU they share the cores; a TPU VM needs 1 (all chips per job).",
                     lower_bound=1, flag_values=FLAGS)
flags.DEFINE_multi_string("grid", [], "Tune first: field=v1,v2 (repeatable; the grid is "
                          "the product), e.g. --grid=optim.lr=1e-3,1e-2. Every point trains "
                          "on train800 -> val200, the best val top-1 per (task, method) goes "
                          "to <workdir>/recipes.json, then every seed runs the final "
                          "protocol with it.", flag_values=FLAGS)
flags.DEFINE_boolean("collect_only", False, "Only rebuild results.md and results.csv from "
                     "the finished runs.", flag_values=FLAGS)
flags.DEFINE_boolean("fail_fast", False, "Stop at the first failed job (running jobs are "
                     "interrupted and resume on the next run).", flag_values=FLAGS)
flags.DEFINE_boolean("help", False, "Show this help.", short_name="?", flag_values=FLAGS)


def usage() -> str:
  return absl_cli.own_usage(FLAGS, __doc__)


def parse_flags(argv: Sequence[str]) -> Optional[int]:
  """Parses argv (argv[0] = program) into FLAGS; an exit code when there is nothing to run."""
  return absl_cli.parse_own_flags(FLAGS, argv, doc=__doc__, example="--tasks=dtd",
                                  workdir_example="workdirs/sweep")


def main(argv: Sequence[str] = ()) -> int:
  """Runs the sweep that FLAGS describe (parsed already); returns the exit code."""
  del argv
  workdir = FLAGS.workdir
  failed: list[str] = []
  main_thread = threading.current_thread() is threading.main_thread()
  previous = signal.signal(signal.SIGTERM, _on_sigterm) if main_thread else None
  try:
    if not FLAGS.collect_only:
      failed = run_sweep(parse_tasks(FLAGS.tasks, vtab=is_vtab_config(FLAGS.config)),
                         parse_methods(FLAGS.methods), parse_seeds(FLAGS.seeds), workdir,
                         config_args=FLAGS.config_args, config=FLAGS.config,
                         parallel=FLAGS.parallel, fail_fast=FLAGS.fail_fast,
                         grid=FLAGS.grid)
    collect(workdir)
    print(f"wrote {Path(workdir) / 'results.md'} and results.csv", file=sys.stderr)
  except UserError as e:
    return absl_cli.fail(e.one_line())
  except KeyboardInterrupt as e:
    print("interrupted; rerun the same command to resume", file=sys.stderr)
    return preemption.EXIT_CODE if isinstance(e, Terminated) else 130
  finally:
    if main_thread:
      signal.signal(signal.SIGTERM, previous or signal.SIG_DFL)
  if failed:
    print(f"error: {len(failed)} job(s) did not finish: {', '.join(failed)}; see "
          f"{Path(workdir) / 'results.md'} and rerun to retry", file=sys.stderr)
    return 1
  return 0


def run_cli(argv: Sequence[str]) -> int:
  """Parses `argv` and runs: what `python -m heat_jax.sweep` does, as a function."""
  code = parse_flags(argv)
  return main() if code is None else code


def _absl_flags_parser(argv: list[str]) -> list[str]:
  code = parse_flags(argv)
  if code is not None:
    sys.exit(code)
  flags.FLAGS(argv[:1])   # app.run wants absl's global flags parsed; they keep defaults
  return argv


if __name__ == "__main__":
  app.run(main, flags_parser=_absl_flags_parser)
