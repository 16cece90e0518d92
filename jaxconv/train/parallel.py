"""Where the state and batches live, and how the steps are compiled: one device, mesh, or pmap.

- ``single``: plain ``jax.jit`` on one device.
- ``mesh`` (default with several devices): ``jax.jit`` over a 1-D ``Mesh(devices, ("data",))``;
  batches are ``NamedSharding(mesh, P("data"))`` (split along the batch), the state is
  replicated (``P()``). XLA inserts the gradient all-reduce, and batch norm computes global-batch
  statistics by itself.
- ``pmap``: ``jax.pmap`` with ``axis_name="data"``; batches are reshaped to ``[D, B/D, ...]``;
  the step averages with ``lax.pmean`` and the model's batch norms take ``axis_name="data"``.

All steps donate the incoming state (``donate_argnums=0``).

Example:
  >>> import jax
  >>> p = Placement.create("auto", devices=jax.local_devices()[:1])
  >>> p.mode, p.num_devices
  ('single', 1)
"""

from __future__ import annotations

import dataclasses
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

  @classmethod
  def create(cls, parallel: str = "auto", devices: Optional[Sequence[Any]] = None,
             num_devices: Optional[int] = None) -> "Placement":
    """Args: ``parallel`` in auto/mesh/pmap/none; ``devices`` default ``jax.local_devices()``,
    truncated to ``num_devices``."""
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
      return jax.device_put(state, NamedSharding(self.mesh, P()))
    n = self.num_devices
    return jax.tree.map(
        lambda a: self._pmap_put(np.broadcast_to(np.asarray(a)[None], (n,) + np.shape(a))), state)

  def put_batch(self, batch):
    """A host batch (tuple of ``[B, ...]`` arrays) onto the devices, split along B."""
    if self.mode == "single":
      return jax.device_put(batch, self.devices[0])
    if self.mode == "mesh":
      return jax.device_put(batch, NamedSharding(self.mesh, P(AXIS)))
    n = self.num_devices
    return tuple(self._pmap_put(a.reshape((n, a.shape[0] // n) + a.shape[1:])) for a in batch)

  def _pmap_put(self, a):
    # [D, ...] with row d on device d: what pmap expects (pmap is built on shard_map here).
    return jax.device_put(a, NamedSharding(self.mesh, P(AXIS)))

  def unreplicate(self, tree):
    """Host copy of a (replicated) state or metrics tree."""
    if self.mode == "pmap":
      tree = jax.tree.map(lambda a: a[0], tree)
    return jax.device_get(tree)

  def gather(self, a) -> np.ndarray:
    """A per-example output ``[B]`` (or ``[D, B/D]`` under pmap) as one host array."""
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
