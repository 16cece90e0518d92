"""The only place jaxconv reads private JAX API. Tested with JAX 0.10.2 (jaxlib 0.10.2).

Each entry has a fallback that keeps results correct should the API move in another JAX
version; what is lost is said per entry. Nothing else in jaxconv imports ``jax._src``.
"""

from __future__ import annotations

from typing import Any, Optional


def jit_keyed_state(name: str, default: str, help_text: str) -> Optional[Any]:
  """A JAX config state that is part of ``jit``'s cache key and trace context
  (``jax._src.config.State``), or ``None``.

  Fallback (``None``): :func:`jaxconv.ops.conv_config` keeps its setting in a context variable
  read at trace time, so a function already jitted does not retrace under another setting.
  """
  try:
    from jax._src import config as jax_config

    return jax_config.State(name, default, help_text, include_in_jit_key=True, include_in_trace_context=True)
  except Exception:  # noqa: BLE001 - any API drift
    return None


def require_devices_during_lowering(*prims) -> bool:
  """Marks primitives as needing the concrete device assignment while they lower
  (``jax._src.dispatch.prim_requires_devices_during_lowering``).

  :func:`jax.experimental.custom_partitioning` needs the devices (its lowering builds the mesh
  that its callbacks see), but it hides inside the native primitives' lowering, where ``jit``
  does not look for it. Returns whether the mark was set. Fallback (``False``): the native
  kernels lower to a plain custom call, which XLA's partitioner runs on the gathered batch on
  every device (same numbers, no per-shard speed-up). Side effect: exporting them under an
  abstract mesh without devices raises.
  """
  try:
    from jax._src import dispatch

    for p in prims:
      dispatch.prim_requires_devices_during_lowering.add(p)
    return True
  except Exception:  # noqa: BLE001 - any API drift
    return False


def lowering_for_export(ctx) -> bool:
  """Whether a lowering rule's context lowers for :mod:`jax.export`
  (``ctx.module_context.lowering_parameters.for_export``).

  Fallback (``False``): exported functions keep the native custom calls, which
  :func:`jax.export.export` refuses to serialize.
  """
  try:
    return bool(ctx.module_context.lowering_parameters.for_export)
  except AttributeError:
    return False
