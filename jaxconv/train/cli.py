"""``jaxconv train``: every :class:`TrainConfig` field is an option; a JSON/YAML file may hold them.

Precedence: defaults < ``--config FILE`` < command-line options.

Examples::

  jaxconv train                                   # LeNet-5 on the bundled digits
  jaxconv train --dataset mnist --data-dir ~/data/mnist --epochs 15
  jaxconv train --config run.yaml --resume --workdir runs/my-run
  jaxconv launch -n 2 -- train --model resnet18 --dataset cifar10   # 2 cooperating processes

Several processes (one per host or accelerator): ``--coordinator HOST:PORT --num-processes N
--process-id I`` in each, or the environment variables ``JAX_COORDINATOR_ADDRESS``,
``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``, or ``--coordinator auto`` where JAX detects the
cluster (see :mod:`jaxconv.train.distributed`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import typing
from collections.abc import Sequence
from typing import Optional

from jaxconv.train.config import OPTIMIZERS, PARALLEL, PRECISIONS, SCHEDULES, TrainConfig, read_config_file

# Fields given a short alias or a different option spelling.
_ALIASES = {"lr": ["--lr", "--learning-rate"], "batch_size": ["--batch-size", "-b"],
            "epochs": ["--epochs", "-e"]}


def _field_help() -> dict[str, str]:
  """Help text per field, from the Attributes section of TrainConfig's docstring."""
  doc = TrainConfig.__doc__ or ""
  out, cur = {}, None
  for line in doc.split("Attributes:", 1)[-1].splitlines():
    m = re.match(r"^    (\w+): (.*)$", line)
    if m:
      cur = m.group(1)
      out[cur] = m.group(2)
    elif cur and line.startswith("      "):
      out[cur] += " " + line.strip()
  # Plain text on a terminal: the docstring's ``literal`` markup goes.
  return {k: v.replace("``", "") for k, v in out.items()}


def _parse_optional(kind):
  def parse(s: str):
    return None if s.lower() in ("none", "null", "") else kind(s)
  parse.__name__ = kind.__name__
  return parse


def _parse_bool(s: str) -> bool:
  if s.lower() in ("1", "true", "yes", "on"):
    return True
  if s.lower() in ("0", "false", "no", "off"):
    return False
  raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


_CHOICES = {"optimizer": OPTIMIZERS, "schedule": SCHEDULES, "precision": PRECISIONS,
            "parallel": PARALLEL}


def _parse_tuple(s: str) -> tuple:
  return tuple(float(v) for v in s.split(",") if v.strip())


def _parse_dict(s: str) -> dict:
  try:
    d = json.loads(s)
  except json.JSONDecodeError as e:
    raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"input_size\": 32}}': {e}")
  if not isinstance(d, dict):
    raise argparse.ArgumentTypeError("expected a JSON object")
  return d


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="jaxconv train", description="Train a model (default: LeNet-5 on the bundled digits).")
  p.add_argument("--config", help="a JSON or YAML file of config fields (options override it)")
  multi = p.add_argument_group("several processes (default: the JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES "
                               "and JAX_PROCESS_ID environment variables; none: one process)")
  multi.add_argument("--coordinator", metavar="HOST:PORT",
                     help="process 0's address, the same in every process; 'auto': let JAX detect the "
                          "cluster (SLURM, Open MPI, Cloud TPU)")
  multi.add_argument("--num-processes", type=int, metavar="N", help="processes in the run")
  multi.add_argument("--process-id", type=int, metavar="I", help="this process's index, 0 <= I < N")
  helps = _field_help()
  hints = typing.get_type_hints(TrainConfig)
  defaults = TrainConfig()
  for f in dataclasses.fields(TrainConfig):
    names = _ALIASES.get(f.name, ["--" + f.name.replace("_", "-")])
    text = helps.get(f.name, "") + f" (default: {getattr(defaults, f.name)!r})"
    kw = dict(dest=f.name, default=argparse.SUPPRESS, help=text.replace("%", "%%"))
    hint = hints[f.name]
    args = typing.get_args(hint)
    base = next((a for a in args if a is not type(None)), hint) if args else hint
    if hint is bool:
      kw["action"] = argparse.BooleanOptionalAction
    elif f.name in ("model_kwargs",):
      kw["type"], kw["metavar"] = _parse_dict, "JSON"
    elif f.name == "lr_decay_epochs":
      kw["type"], kw["metavar"] = _parse_tuple, "E1,E2,..."
    elif type(None) in args:
      kw["type"] = _parse_optional(_parse_bool if base is bool else base)
    else:
      kw["type"] = base
    if f.name in _CHOICES:  # validated by TrainConfig, whose message lists the valid names
      kw["metavar"] = "{" + ",".join(_CHOICES[f.name]) + "}"
    p.add_argument(*names, **kw)
  return p


_PROCESS_OPTIONS = ("coordinator", "num_processes", "process_id")


def parse_args(argv: Sequence[str]) -> tuple[TrainConfig, Optional[tuple]]:
  """The TrainConfig for a command line (defaults < --config file < options), and the
  multi-process settings (``None``: one process; see :func:`distributed.settings_from`)."""
  from jaxconv.train import distributed

  values = vars(build_parser().parse_args(list(argv)))
  procs = distributed.settings_from(*(values.pop(k) for k in _PROCESS_OPTIONS))
  path = values.pop("config", None)
  merged = read_config_file(path) if path else {}
  merged.update(values)
  return TrainConfig.from_dict(merged), procs


def parse_config(argv: Sequence[str]) -> TrainConfig:
  """The TrainConfig for a command line (defaults < --config file < options)."""
  return parse_args(argv)[0]


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Runs ``jaxconv train``; returns 0 on success, 1 on a NaN stop, 2 on bad input, 3 when a run
  of several processes fails in another process."""
  argv = list(sys.argv[1:] if argv is None else argv)
  try:
    cfg, procs = parse_args(argv)
  except (ValueError, TypeError, FileNotFoundError) as e:
    print(f"jaxconv train: error: {e}", file=sys.stderr)
    return 2
  from jaxconv.train.loop import NonFiniteLossError, train  # heavy imports after parsing
  try:
    if procs is not None:
      from jaxconv.train import distributed
      distributed.initialize(*procs)  # before anything touches a device
    train(cfg)
  except NonFiniteLossError as e:
    print(f"jaxconv train: {e}", file=sys.stderr)
    return 1
  except (ValueError, TypeError, OSError, ImportError) as e:
    print(f"jaxconv train: error: {e}", file=sys.stderr)
    return 2
  except RuntimeError as e:
    if procs is None:
      raise
    # Another process died or stopped answering: JAX's collectives and coordination service fail
    # here. One line, naming this process; the launcher (or the cluster) stops the rest.
    import jax
    first = next((l.strip() for l in str(e).splitlines() if l.strip()), type(e).__name__)
    print(f"jaxconv train: error in process {jax.process_index()} of {jax.process_count()}: {first[:400]}",
          file=sys.stderr, flush=True)
    sys.stdout.flush()
    # Not a normal exit: JAX's shutdown would wait at a barrier for the dead process until the
    # heartbeat timeout, then abort with a stack trace.
    os._exit(3)
  return 0


if __name__ == "__main__":
  sys.exit(main())
