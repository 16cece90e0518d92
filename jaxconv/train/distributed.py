"""Several cooperating processes: JAX's multi-controller runtime (``jax.distributed``).

One process per host (or per accelerator), each running the same program: the global mesh spans
every process's devices, each process feeds its own rows of every global batch, and XLA's
collectives (gloo between processes on CPU) make gradients, batch-norm statistics and metrics
global. Only process 0 writes logs, metrics, plots and checkpoint metadata.

:func:`initialize` must run before anything touches a JAX device. Where it takes its settings,
first match wins:

1. its arguments (``jaxconv train --coordinator HOST:PORT --num-processes N --process-id I``);
2. the environment: ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``
   (what ``jaxconv launch`` sets for its children);
3. ``coordinator="auto"``: JAX detects the cluster itself, as ``jax.distributed.initialize()``
   does for SLURM (``srun``), Open MPI (``mpirun``, with ``mpi4py`` installed), and Cloud TPU
   and GKE/Kubernetes TPU jobs.

With none of them, the run is one process, as before.

Example (one process: nothing to initialize):
  >>> from jaxconv.train.distributed import settings_from
  >>> settings_from(None, None, None, environ={}) is None
  True
  >>> settings_from("10.0.0.1:1234", 2, 1, environ={})
  ('10.0.0.1:1234', 2, 1)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Optional

ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
AUTO = "auto"


def settings_from(coordinator: Optional[str], num_processes: Optional[int], process_id: Optional[int],
                  environ: Optional[Mapping[str, str]] = None) -> Optional[tuple]:
  """``(coordinator, num_processes, process_id)`` from the arguments, else the environment;
  ``None`` for a single process; ``("auto", None, None)`` for JAX's cluster detection.

  Raises:
    ValueError: an incomplete or inconsistent set (named with the value received).
  """
  env = os.environ if environ is None else environ
  if coordinator is None and num_processes is None and process_id is None:
    coordinator = env.get(ENV[0]) or None
    num_processes = _int_env(env, ENV[1])
    process_id = _int_env(env, ENV[2])
  if coordinator == AUTO:
    if num_processes is not None or process_id is not None:
      raise ValueError("coordinator='auto' lets JAX detect the cluster: leave num_processes and process_id "
                       f"unset (got num_processes={num_processes}, process_id={process_id}).")
    return (AUTO, None, None)
  given = {"coordinator": coordinator, "num_processes": num_processes, "process_id": process_id}
  if all(v is None for v in given.values()):
    return None
  missing = [k for k, v in given.items() if v is None]
  if missing:
    raise ValueError(f"several processes need coordinator, num_processes and process_id together; "
                     f"missing {', '.join(missing)} (got {given}). Use HOST:PORT, N >= 1 and 0 <= I < N, or "
                     f"coordinator='auto' on a cluster JAX detects.")
  if not isinstance(coordinator, str) or ":" not in coordinator:
    raise ValueError(f"coordinator must be HOST:PORT (or 'auto'); got {coordinator!r}.")
  if num_processes < 1 or not 0 <= process_id < num_processes:
    raise ValueError(f"need num_processes >= 1 and 0 <= process_id < num_processes; got num_processes="
                     f"{num_processes}, process_id={process_id}.")
  return (coordinator, int(num_processes), int(process_id))


def _int_env(env: Mapping[str, str], name: str) -> Optional[int]:
  v = env.get(name)
  if v in (None, ""):
    return None
  try:
    return int(v)
  except ValueError:
    raise ValueError(f"environment variable {name} must be an integer; got {v!r}.") from None


def initialize(coordinator: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, *, heartbeat_timeout_s: int = 30) -> bool:
  """Joins this process to a multi-process run (see the module docstring); a no-op for one process.

  Args:
    coordinator: ``HOST:PORT`` of process 0's coordination service, or ``"auto"``.
    num_processes: processes in the run.
    process_id: this process's index, ``0 <= process_id < num_processes``.
    heartbeat_timeout_s: a process that stops answering (killed, its host gone) is declared dead
      after this long, and the others stop with an error instead of waiting forever.

  Returns:
    Whether the process now belongs to a multi-process run.
  """
  settings = settings_from(coordinator, num_processes, process_id)
  if settings is None:
    return False
  import jax

  if jax.config.jax_cpu_collectives_implementation is None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # cross-process CPU collectives
  if settings[0] == AUTO:
    jax.distributed.initialize(heartbeat_timeout_seconds=heartbeat_timeout_s)
  else:
    addr, n, i = settings
    jax.distributed.initialize(coordinator_address=addr, num_processes=n, process_id=i,
                               heartbeat_timeout_seconds=heartbeat_timeout_s)
  return jax.process_count() > 1


def is_primary() -> bool:
  """Whether this is process 0 (the one that writes logs, metrics and plots)."""
  import jax

  return jax.process_index() == 0
