"""Where the state and batches live, and how the steps are compiled: one device, mesh, or pmap.

- ``single``: plain ``jax.jit`` on one device.
- ``mesh`` (default with several devices): ``jax.jit`` over a 1-D ``Mesh(devices, ("data",))``;
  batches are ``NamedSharding(mesh, P("data"))`` (split along the batch), the state is
  replicated (``P()``). XLA inserts the gradient all-reduce, and batch norm computes global-batch
  statistics by itself.
- ``pmap``: ``jax.pmap`` with ``axis_name="data"``; batches are reshaped to ``[D, B/D, ...]``;
  the step averages with ``lax.pmean`` and the model's batch norms take ``axis_name="data"``.

With several processes (:mod:`jaxconv.train.distributed`) the mesh spans every process's
devices (``jax.devices()``), ordered by process; each process places only its own rows of a
global batch (``jax.make_array_from_process_local_data``), and reads replicated values from its
own devices. Only ``mesh`` runs across processes.

All steps donate the incoming state (``donate_argnums=0``).

Example:
  >>> import jax
  >>> p = Placement.create("auto", devices=jax.local_devices()[:1])
  >>> p.mode, p.num_devices
  ('single', 1)
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any, Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "data"


@dataclasses.dataclass
class Placement:
  """Device placement of a run; see the module docstring."""
  mode: str
  devices: Sequence[Any]
  mesh: Optional[Mesh] = None
  _rows: dict = dataclasses.field(default_factory=dict, init=False, repr=False, compare=False)  # size -> rows

  @classmethod
  def create(cls, parallel: str = "auto", devices: Optional[Sequence[Any]] = None,
             num_devices: Optional[int] = None) -> "Placement":
    """Args: ``parallel`` in auto/mesh/pmap/none; ``devices`` default ``jax.local_devices()``
    (every process's devices, ``jax.devices()``, in a multi-process run), truncated to
    ``num_devices``."""
    if jax.process_count() > 1:
      return cls._across_processes(parallel, devices, num_devices)
    devices = list(devices if devices is not None else jax.local_devices())
    if num_devices is not None:
      if num_devices > len(devices):
        raise ValueError(f"num_devices={num_devices} but only {len(devices)} local devices exist.")
      devices = devices[:num_devices]
    if parallel == "none" or len(devices) == 1:
      return cls("single", devices[:1])
    if parallel in ("auto", "mesh"):
      return cls("mesh", devices, Mesh(np.array(devices), (AXIS,)))
    if parallel == "pmap":
      return cls("pmap", devices, Mesh(np.array(devices), (AXIS,)))
    raise ValueError(f"unknown parallel mode {parallel!r}; choose one of auto, mesh, pmap, none.")

  @classmethod
  def _across_processes(cls, parallel, devices, num_devices) -> "Placement":
    n = jax.process_count()
    if parallel not in ("auto", "mesh"):
      raise ValueError(f"parallel={parallel!r} runs within one process; with {n} processes use 'auto' or "
                       "'mesh' (one mesh over every process's devices).")
    if devices is not None or num_devices is not None:
      raise ValueError(f"devices/num_devices select local devices; a run of {n} processes uses every "
                       f"process's devices (got num_devices={num_devices}). Set the devices per process "
                       "instead (JAX_NUM_CPU_DEVICES on CPU, CUDA_VISIBLE_DEVICES on GPU).")
    devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    return cls("mesh", devices, Mesh(np.array(devices), (AXIS,)))

  @functools.cached_property
  def multiprocess(self) -> bool:
    """Whether the mesh spans devices of other processes."""
    return any(d.process_index != jax.process_index() for d in self.devices)

  @property
  def num_devices(self) -> int:
    return len(self.devices)

  @property
  def axis_name(self) -> Optional[str]:
    """The collective axis the model's batch norms need (pmap only)."""
    return AXIS if self.mode == "pmap" else None

  # ---- placing data

  def put_state(self, state):
    if self.mode == "single":
      return jax.device_put(state, self.devices[0])
    if self.mode == "mesh":
      if self.multiprocess:  # every process holds the same host state
        repl = NamedSharding(self.mesh, P())
        return jax.tree.map(lambda a: jax.make_array_from_process_local_data(repl, np.asarray(a)), state)
      return jax.device_put(state, NamedSharding(self.mesh, P()))
    n = self.num_devices
    return jax.tree.map(
        lambda a: self._pmap_put(np.broadcast_to(np.asarray(a)[None], (n,) + np.shape(a))), state)

  def put_batch(self, batch):
    """A host batch (tuple of ``[B, ...]`` arrays) onto the devices, split along B.

    Across processes every process passes the same global batch and places only its own rows.
    """
    if self.mode == "single":
      return jax.device_put(batch, self.devices[0])
    if self.multiprocess:
      data = NamedSharding(self.mesh, P(AXIS))
      lo, hi = self.local_rows(len(batch[0]))
      return tuple(jax.make_array_from_process_local_data(data, np.asarray(a[lo:hi]), a.shape) for a in batch)
    if self.mode == "mesh":
      return jax.device_put(batch, NamedSharding(self.mesh, P(AXIS)))
    n = self.num_devices
    return tuple(self._pmap_put(a.reshape((n, a.shape[0] // n) + a.shape[1:])) for a in batch)

  def _pmap_put(self, a):
    # [D, ...] with row d on device d: what pmap expects (pmap is built on shard_map here).
    return jax.device_put(a, NamedSharding(self.mesh, P(AXIS)))

  def local_rows(self, batch_size: int) -> tuple[int, int]:
    """``[lo, hi)``: the rows of a global batch that this process's devices hold."""
    if batch_size not in self._rows:
      self._rows[batch_size] = self._find_rows(batch_size)
    return self._rows[batch_size]

  def _find_rows(self, batch_size: int) -> tuple[int, int]:
    index = NamedSharding(self.mesh, P(AXIS)).addressable_devices_indices_map((batch_size,))
    rows = [s[0].indices(batch_size)[:2] for s in index.values()]
    lo, hi = min(r[0] for r in rows), max(r[1] for r in rows)
    if hi - lo != sum(r[1] - r[0] for r in rows):
      raise ValueError(f"this process's devices hold rows {sorted(rows)} of the batch, not one block.")
    return lo, hi

  def unreplicate(self, tree):
    """Host copy of a (replicated) state or metrics tree."""
    if self.mode == "pmap":
      tree = jax.tree.map(lambda a: a[0], tree)
    if self.multiprocess:  # a replicated value is whole on each of this process's devices
      return jax.tree.map(lambda a: np.asarray(a.addressable_data(0)), tree)
    return jax.device_get(tree)

  def gather(self, a) -> np.ndarray:
    """A per-example output ``[B]`` (or ``[D, B/D]`` under pmap) as one host array."""
    if self.multiprocess:
      from jax.experimental import multihost_utils

      return np.asarray(multihost_utils.process_allgather(a, tiled=True))
    a = np.asarray(jax.device_get(a))
    return a.reshape(-1) if self.mode == "pmap" else a

  # ---- compiling

  def compile_train(self, train_step: Callable) -> Callable:
    if self.mode == "pmap":
      return jax.pmap(train_step, axis_name=AXIS, devices=self.devices, donate_argnums=0)
    if self.mode == "mesh":
      repl, data = NamedSharding(self.mesh, P()), NamedSharding(self.mesh, P(AXIS))
      return jax.jit(train_step, in_shardings=(repl, data, data), out_shardings=(repl, repl),
                     donate_argnums=0)
    return jax.jit(train_step, donate_argnums=0)

  def compile_eval(self, eval_step: Callable) -> Callable:
    if self.mode == "pmap":
      return jax.pmap(eval_step, axis_name=AXIS, devices=self.devices)
    if self.mode == "mesh":
      repl, data = NamedSharding(self.mesh, P()), NamedSharding(self.mesh, P(AXIS))
      return jax.jit(eval_step, in_shardings=(repl, data, data, data), out_shardings=(repl, data))
    return jax.jit(eval_step)
