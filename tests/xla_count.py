"""Counting XLA executions: every jitted call and every eager op, fast path included.

A jitted function normally runs through JAX's C++ dispatch path, invisible to Python
once it has been called. `xla_executions()` turns that fast path off (so each call goes
through `pxla.ExecuteReplicated.__call__`, which it counts) and empties the C++
dispatch caches so that functions called before are counted too; compiled executables
are kept, so nothing recompiles. Relies on JAX internals: if they move, this fails
loudly rather than count nothing.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from jax._src import pjit
from jax._src.interpreters import pxla
from jax._src.lib import _jax


def _clear_dispatch_caches() -> None:
  pjit._cpp_pjit_cache_fun_only.clear()
  pjit._cpp_pjit_cache_explicit_attributes.clear()
  _jax.PjitFunctionCache.clear_all()


@contextlib.contextmanager
def xla_executions() -> Iterator[list[str]]:
  """Yields a list that receives the name of every XLA computation executed inside."""
  names: list[str] = []
  call = pxla.ExecuteReplicated.__call__
  fastpath = pjit._get_fastpath_data

  def counted(self, *args):
    names.append(self.name)
    return call(self, *args)

  _clear_dispatch_caches()
  pxla.ExecuteReplicated.__call__ = counted
  pjit._get_fastpath_data = lambda *args, **kwargs: None
  try:
    yield names
  finally:
    pxla.ExecuteReplicated.__call__ = call
    pjit._get_fastpath_data = fastpath
    _clear_dispatch_caches()   # no entry made while counting may skip the fast path later
