"""One feeding path for every pass over the data: training, scoring, probes, evaluation.

A `Feed` holds the run's mesh (all devices of all processes, axis 'data'). A global
batch of B rows is split over it: each process loads only its rows (`rows`) and `put`
assembles the global array. `batches` yields this process's rows of a split's batches.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Optional

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from heat_jax import distributed


@dataclasses.dataclass
class Feed:
  """The mesh and the batch helpers of one run."""

  mesh: jax.sharding.Mesh

  @classmethod
  def create(cls) -> "Feed":
    return cls(distributed.make_mesh())

  @property
  def data_sharding(self) -> NamedSharding:
    return distributed.batch_sharding(self.mesh)

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())

  def rows(self, batch_size: int) -> np.ndarray:
    """Positions of a global batch that this process loads (all rows in one process)."""
    return distributed.local_rows(self.data_sharding, batch_size)

  def put(self, batch: dict) -> dict:
    """The global batch from this process's rows of it."""
    n = len(self.mesh.local_devices)
    if len(batch["label"]) % n:
      raise ValueError(f"batch of {len(batch['label'])} is not divisible by {n} devices")
    return distributed.put_batch(batch, self.data_sharding)

  def batches(self, split, batch_size: int, *, shuffle: bool = False, seed: int = 0,
              epoch: int = 0, skip: int = 0, drop_remainder: bool = False,
              local: bool = True) -> Iterator[dict]:
    """This process's rows of `split`'s batches (`local=False`: every row).

    Unshuffled passes are padded (mask 0 rows) so every example counts once; training
    epochs are shuffled, drop-remainder, and skip the first `skip` batches (resume).
    """
    rows: Optional[np.ndarray] = self.rows(batch_size) if local else None
    pad = not drop_remainder
    for i, batch in enumerate(split.batches(batch_size, shuffle=shuffle, seed=seed,
                                            epoch=epoch, drop_remainder=drop_remainder,
                                            pad=pad, rows=rows)):
      if i >= skip:
        yield batch

  def epoch(self, split, batch_size: int, *, seed: int, epoch: int,
            skip: int = 0) -> Iterator[dict]:
    """Shuffled, drop-remainder training batches of one epoch."""
    return self.batches(split, batch_size, shuffle=True, seed=seed, epoch=epoch, skip=skip,
                        drop_remainder=True)
