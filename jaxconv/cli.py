"""The ``jaxconv`` command: ``jaxconv {train,eval,bench,summary,native,viz,convert,launch} [options]``.

Thin by design: it parses the subcommand and hands the remaining arguments to the workflow that
owns it (each exposes ``main(argv) -> int``), importing only that workflow.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from typing import Optional

# subcommand -> (module with main(argv), one-line help)
COMMANDS = {
    "train": ("jaxconv.train.cli", "train a model (default: LeNet-5 on the bundled digits)"),
    "eval": ("jaxconv.train.cli_eval", "evaluate a checkpoint: accuracy and confusion matrix"),
    "bench": ("jaxconv.bench.cli", "run the benchmark suite and write JSON/Markdown/PNG reports"),
    "summary": ("jaxconv.summary.cli", "print a model's per-layer shapes, parameters, MACs, receptive field"),
    "native": ("jaxconv.native_cli", "build the native CPU kernels ahead of time, or say which variant runs"),
    "viz": ("jaxconv.viz_cli", "an illustrated report of what a trained CNN has learned (filters, CAMs, ...)"),
    "convert": ("jaxconv.convert_cli", "convert weights between torchvision files (.pth, .safetensors) and runs"),
    "launch": ("jaxconv.train.launch", "run a command (train) as N cooperating processes on this machine"),
}
# Commands that run train or eval steps: glibc keeps XLA's freed buffers for the next step
# (jaxconv.train.keep_host_memory; JAXCONV_SYSTEM_MALLOC=1 turns it off).
_RUNS_STEPS = ("train", "eval", "bench")


def _usage() -> str:
  lines = ["usage: jaxconv <command> [options]", "", "commands:"]
  lines += [f"  {name:<9} {help_}" for name, (_, help_) in COMMANDS.items()]
  lines += ["", "Run 'jaxconv <command> --help' for a command's options."]
  return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Entry point of the ``jaxconv`` console script."""
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0] in ("-h", "--help"):
    print(_usage())
    return 0 if argv else 2
  cmd, rest = argv[0], argv[1:]
  if cmd not in COMMANDS:
    print(f"jaxconv: unknown command {cmd!r}; choose one of {', '.join(COMMANDS)}.\n", file=sys.stderr)
    print(_usage(), file=sys.stderr)
    return 2
  if cmd in _RUNS_STEPS:  # before JAX starts its threads
    from jaxconv.train.host import keep_host_memory

    keep_host_memory()
  module = importlib.import_module(COMMANDS[cmd][0])
  return int(module.main(rest) or 0)


if __name__ == "__main__":
  sys.exit(main())
