"""Runs many command lines of the project's CLIs, each in a child forked after one import.

  python tests/cli_batch.py CASES.json OUT_DIR [PARALLEL]

CASES.json is a list of {"argv": [...], "entry": "run.py" | "module:<name>", "env": {...}}.
For case i the child's exit code, stdout and stderr land in OUT_DIR/<i>.json.

Each child runs the entry point exactly as `python run.py ARGV` would (`runpy` with
`__name__ == "__main__"`, so absl parses the flags and run.py's docstring is the help
text); only the interpreter start-up and the imports are shared. The parent imports
jax and heat_jax but never parses flags or starts a JAX backend, so every child starts
from the state a fresh process has after its imports.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 180


def _preload() -> None:
  sys.path.insert(0, ROOT)
  import jax  # noqa: F401
  import heat_jax.cli  # noqa: F401
  import heat_jax.data.folder  # noqa: F401
  import heat_jax.data.prepare  # noqa: F401
  import heat_jax.data.synthetic  # noqa: F401
  import heat_jax.experiment  # noqa: F401
  import heat_jax.importance  # noqa: F401
  import heat_jax.study  # noqa: F401
  import configs.common  # noqa: F401


def _child(case: dict, out_base: str) -> None:
  """Runs one case in this (forked) process and exits with its code."""
  code = 1
  try:
    for fd, suffix in ((1, ".out"), (2, ".err")):
      f = os.open(out_base + suffix, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
      os.dup2(f, fd)
      os.close(f)
    os.environ.update(case.get("env", {}))
    entry = case.get("entry", "run.py")
    os.chdir(case.get("cwd", ROOT))
    try:
      if entry.startswith("module:"):
        sys.argv = [entry[len("module:"):], *case["argv"]]
        runpy.run_module(entry[len("module:"):], run_name="__main__", alter_sys=True)
      else:
        path = os.path.join(ROOT, entry)
        sys.argv = [path, *case["argv"]]
        runpy.run_path(path, run_name="__main__")
      code = 0
    except SystemExit as e:
      code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # pylint: disable=broad-except  (as the interpreter would)
      traceback.print_exc()
      code = 1
  finally:
    try:
      sys.stdout.flush()
      sys.stderr.flush()
    finally:
      os._exit(code)


def main(cases_path: str, out_dir: str, parallel: int) -> None:
  with open(cases_path) as f:
    cases = json.load(f)
  _preload()
  os.makedirs(out_dir, exist_ok=True)
  todo = list(enumerate(cases))
  running: dict[int, tuple[int, float]] = {}
  while todo or running:
    while todo and len(running) < parallel:
      i, case = todo.pop(0)
      sys.stdout.flush()
      sys.stderr.flush()
      pid = os.fork()
      if pid == 0:
        _child(case, os.path.join(out_dir, str(i)))
      running[pid] = (i, time.time())
    pid, status = os.waitpid(-1, os.WNOHANG)
    if pid == 0:
      for p, (i, start) in list(running.items()):
        if time.time() - start > TIMEOUT_S:
          os.kill(p, 9)
      time.sleep(0.02)
      continue
    i, start = running.pop(pid)
    base = os.path.join(out_dir, str(i))
    result = {"rc": os.waitstatus_to_exitcode(status), "seconds": time.time() - start}
    for suffix, key in ((".out", "stdout"), (".err", "stderr")):
      with open(base + suffix, errors="replace") as f:
        result[key] = f.read()
      os.remove(base + suffix)
    with open(base + ".json", "w") as f:
      json.dump(result, f)


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 4)
