"""One run over several processes (hosts) with JAX's own multi-process runtime.

Every process runs the same program (`python run.py ...` once per host, or once per
GPU). `initialize` joins them through `jax.distributed.initialize` before anything
touches a device; afterwards `jax.devices()` lists the devices of ALL processes and
`make_mesh` spans them. A global batch of B rows is split over the mesh along 'data':
each process loads only its rows (`local_rows`) and `put_batch` assembles the global
array from every process's share (`jax.make_array_from_process_local_data`).
Parameters are replicated, so every process computes the same values; only the
primary process (index 0) writes files and prints (`is_primary`).

In a single process every helper here reduces to the plain single-host behaviour.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from heat_jax.errors import ConfigError

DATA_AXIS = "data"


# ----------------------------------------------------------------------------- start-up


def detected_cluster() -> Optional[str]:
  """The multi-process launcher JAX configures itself from, if this process runs under one.

  Mirrors the environments `jax.distributed.initialize()` detects without arguments,
  restricted to launches of more than one process (a one-task SLURM job is a plain run):
  SLURM `srun`, Open MPI `mpirun`, and Cloud TPU pod slices that publish their workers
  (GKE / queued resources: `TPU_WORKER_HOSTNAMES`, `MEGASCALE_COORDINATOR_ADDRESS`).
  On a TPU VM pod slice without these variables the TPU runtime connects the hosts on
  its own, so nothing is lost by not initialising.
  """
  env = os.environ
  slurm = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
           "SLURM_LOCALID")
  if all(k in env for k in slurm) and _int(env["SLURM_NTASKS"]) > 1:
    return "SLURM"
  if "OMPI_MCA_orte_hnp_uri" in env and _int(env.get("OMPI_COMM_WORLD_SIZE", "0")) > 1:
    return "Open MPI"
  hosts = env.get("TPU_WORKER_HOSTNAMES") or env.get("TPU_PROCESS_ADDRESSES") or ""
  if len([h for h in hosts.split(",") if h.strip()]) > 1 or env.get(
      "MEGASCALE_COORDINATOR_ADDRESS"):
    return "Cloud TPU"
  return None


def _int(text: str) -> int:
  try:
    return int(text)
  except ValueError:
    return 0


def initialize(coordinator_address: Optional[str] = None,
               num_processes: Optional[int] = None, process_id: Optional[int] = None,
               local_device_ids: Optional[Sequence[int]] = None) -> bool:
  """Joins the processes of one run; returns whether `jax.distributed` was initialised.

  Called when any argument is given or `detected_cluster()` finds a launcher (then the
  missing arguments come from the environment); otherwise the run stays single-process.
  Must run before anything touches a device.
  """
  explicit = {k: v for k, v in (("coordinator_address", coordinator_address),
                                ("num_processes", num_processes),
                                ("process_id", process_id),
                                ("local_device_ids", local_device_ids)) if v is not None}
  cluster = detected_cluster()
  if not explicit and cluster is None:
    return False
  if cluster is None:
    missing = [f"--{k}" for k in ("coordinator_address", "num_processes", "process_id")
               if k not in explicit]
    if missing:
      raise ConfigError(f"a multi-process run needs {', '.join(missing)} too (every "
                        "process gets the same --coordinator_address=HOST:PORT and "
                        "--num_processes, and its own --process_id from 0)")
  if num_processes is not None and num_processes < 1:
    raise ConfigError(f"--num_processes must be >= 1, got {num_processes}")
  if process_id is not None and num_processes is not None and not (
      0 <= process_id < num_processes):
    raise ConfigError(f"--process_id must be in [0, {num_processes}), got {process_id}")
  if coordinator_address is not None and ":" not in coordinator_address:
    raise ConfigError(f"--coordinator_address must be HOST:PORT, got "
                      f"{coordinator_address!r}")
  if jax.distributed.is_initialized():
    return True
  try:
    jax.distributed.initialize(**explicit)
  except RuntimeError as e:  # e.g. a device was touched first, or the coordinator is gone
    raise ConfigError(f"jax.distributed.initialize failed: {' '.join(str(e).split())}")
  return True


# ----------------------------------------------------------------------------- who does what


def is_primary() -> bool:
  """True in the process that writes files and prints (process 0; the only one alone)."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Waits until every process reaches the barrier `name` (no-op in one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


# ----------------------------------------------------------------------------- arrays


def make_mesh(devices: Optional[Sequence[Any]] = None) -> Mesh:
  """A 1-D mesh over every device of every process, axis 'data' (classic propagation)."""
  devices = list(jax.devices() if devices is None else devices)
  return jax.make_mesh((len(devices),), (DATA_AXIS,), devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def local_rows(sharding: jax.sharding.Sharding, batch_size: int) -> np.ndarray:
  """Positions in a global batch of `batch_size` rows that this process loads, in order.

  Read from the sharding itself (the devices' slices of rows), so any device order of
  the mesh works; in the usual mesh this is the contiguous block
  `[process_index * batch_size / process_count, ...)`. One process: every row.
  """
  if batch_size % len(sharding.device_set):
    raise ConfigError(f"batch size {batch_size} is not divisible by the "
                      f"{len(sharding.device_set)} devices of all processes")
  slices = {(s[0].start or 0, batch_size if s[0].stop is None else s[0].stop)
            for s in sharding.addressable_devices_indices_map((batch_size,)).values()}
  return np.concatenate([np.arange(a, b) for a, b in sorted(slices)])


def put_batch(batch: dict, sharding: jax.sharding.Sharding) -> dict:
  """Global arrays sharded by `sharding` from this process's rows of every array."""
  local = {k: np.asarray(v) for k, v in batch.items()}
  if jax.process_count() == 1:
    return jax.device_put(local, sharding)
  return jax.make_array_from_process_local_data(sharding, local)


def replicate(tree: Any, sharding: jax.sharding.Sharding) -> Any:
  """`tree` copied to every device of `sharding` (through host memory).

  Host copies first: in a multi-process run, `jax.device_put` of an array that lives
  on one local device onto a sharding spanning other processes' devices yields arrays
  whose shards cannot be read back (seen with jax 0.10 on CPU); numpy input is safe.
  """
  return jax.device_put(fetch(tree), sharding)


def fetch(tree: Any) -> Any:
  """Host numpy copies of (possibly global) arrays, identical in every process.

  Replicated and local arrays are read directly; an array sharded over several
  processes is gathered first (a collective: every process must call this).
  """
  def get(x):
    if isinstance(x, jax.Array) and not (x.is_fully_addressable or x.is_fully_replicated):
      from jax.experimental import multihost_utils
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return jax.device_get(x)
  return jax.tree.map(get, tree)
