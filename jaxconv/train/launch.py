"""``jaxconv launch``: N cooperating ``jaxconv`` processes on this machine.

Starts ``N`` copies of a ``jaxconv`` command (``train``, in practice) on the loopback interface,
process ``I`` with ``JAX_COORDINATOR_ADDRESS=127.0.0.1:PORT``, ``JAX_NUM_PROCESSES=N`` and
``JAX_PROCESS_ID=I`` set (:mod:`jaxconv.train.distributed` reads them), and on CPU
``JAX_NUM_CPU_DEVICES`` devices per process (default 1) and ``JAXCONV_NATIVE_THREADS`` threads
for the native kernels (the machine's cores shared out, unless set). Each line a child prints comes out
prefixed with ``[I]``. When one child fails, the others get ``--grace`` seconds to notice and
stop with their own error (a collective with a dead peer fails at once), then SIGTERM, then
SIGKILL; the launcher exits with the first failure's status.

Examples::

  jaxconv launch -n 2 -- train --model small_cnn --epochs 1
  jaxconv launch -n 4 --port 12355 -- train --config examples/configs/resnet18_cifar10.yaml

On several machines, start one process per machine yourself with the same coordinator (process
0's host); see the README ("Several processes and machines").
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Optional


def free_port() -> int:
  """A TCP port that was free on 127.0.0.1 a moment ago."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _forward(proc: subprocess.Popen, prefix: str, out, lock: threading.Lock) -> None:
  """Copies ``proc``'s output to ``out``, a prefix on each line. Once ``out`` is a pipe whose
  reader has gone (``jaxconv launch ... | head``) the lines are read and dropped: the process
  must not block on a full pipe of its own."""
  reader_gone = False
  for line in proc.stdout:
    if reader_gone:
      continue
    with lock:
      try:
        out.write(prefix + line)
        out.flush()
      except BrokenPipeError:
        reader_gone = True


def launch(command: Sequence[str], num_processes: int, *, port: Optional[int] = None,
           cpu_devices: int = 1, grace_s: float = 10.0, out=None) -> int:
  """Runs ``jaxconv COMMAND`` as ``num_processes`` cooperating processes; returns the exit status
  (0 when every process succeeded, else the first failure's)."""
  if num_processes < 1:
    raise ValueError(f"num_processes must be >= 1; got {num_processes}.")
  if cpu_devices < 1:
    raise ValueError(f"cpu_devices must be >= 1; got {cpu_devices}.")
  if not command:
    raise ValueError("no command to launch: give one after '--', e.g. 'jaxconv launch -n 2 -- train'.")
  out = sys.stdout if out is None else out
  port = free_port() if port is None else port
  lock = threading.Lock()
  procs, threads = [], []
  for i in range(num_processes):
    env = dict(os.environ, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(num_processes),
               JAX_PROCESS_ID=str(i), PYTHONUNBUFFERED="1")
    env.setdefault("JAX_NUM_CPU_DEVICES", str(cpu_devices))
    # N processes on one machine: each gets its share of the cores, not all of them.
    env.setdefault("JAXCONV_NATIVE_THREADS", str(max(1, (os.cpu_count() or 1) // num_processes)))
    p = subprocess.Popen([sys.executable, "-m", "jaxconv.cli", *command], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, bufsize=1)
    procs.append(p)
    t = threading.Thread(target=_forward, args=(p, f"[{i}] ", out, lock), daemon=True)
    t.start()
    threads.append(t)

  status = 0
  try:
    running = set(range(num_processes))
    while running:
      for i in sorted(running):
        rc = procs[i].poll()
        if rc is None:
          continue
        running.discard(i)
        if rc != 0 and status == 0:
          status = rc if rc > 0 else 128 - rc  # killed by signal s: 128 + s, as a shell reports it
          with lock:
            print(f"jaxconv launch: process {i} exited with status {rc}; stopping the other "
                  f"{len(running)} (within {grace_s:g} s)", file=sys.stderr, flush=True)
          _stop([procs[j] for j in running], grace_s)
      time.sleep(0.05)
  except KeyboardInterrupt:
    _stop(procs, grace_s)
    status = 130
  for t in threads:
    t.join(timeout=5)
  return status


def _stop(procs, grace_s: float, term_s: float = 2.0) -> None:
  """Lets ``procs`` exit on their own for ``grace_s``, then SIGTERM, then SIGKILL after ``term_s``."""
  for sig, wait_s in ((None, grace_s), (signal.SIGTERM, term_s), (signal.SIGKILL, None)):
    alive = [p for p in procs if p.poll() is None]
    for p in alive if sig is not None else ():
      p.send_signal(sig)  # JAX's preemption handler may hold SIGTERM; SIGKILL cannot be held
    deadline = None if wait_s is None else time.monotonic() + wait_s
    for p in alive:
      try:
        p.wait(timeout=None if deadline is None else max(deadline - time.monotonic(), 0.0))
      except subprocess.TimeoutExpired:
        pass


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  command: list[str] = []
  if "--" in argv:
    cut = argv.index("--")
    argv, command = argv[:cut], argv[cut + 1:]
  ap = argparse.ArgumentParser(prog="jaxconv launch", description=__doc__.split("\n")[0],
                               usage="jaxconv launch -n N [--port PORT] [--cpu-devices K] -- COMMAND [ARGS...]")
  ap.add_argument("-n", "--num-processes", type=int, required=True, help="processes to start")
  ap.add_argument("--port", type=int, default=None, help="coordinator port on 127.0.0.1 (default: a free one)")
  ap.add_argument("--cpu-devices", type=int, default=1,
                  help="CPU devices per process when JAX_NUM_CPU_DEVICES is unset (default: 1)")
  ap.add_argument("--grace", type=float, default=10.0,
                  help="seconds the others get to stop on their own after one fails, before SIGTERM "
                       "(default: 10)")
  args = ap.parse_args(argv)
  try:
    return launch(command, args.num_processes, port=args.port, cpu_devices=args.cpu_devices, grace_s=args.grace)
  except ValueError as e:
    print(f"jaxconv launch: error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
