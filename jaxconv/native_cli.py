"""``jaxconv native --status | --build [--isa VARIANT ...]``: the native CPU kernels.

``--status`` prints which variant of the native convolution kernels runs here and why (see
:func:`jaxconv.ops.native_status`), building it if needed. ``--build`` compiles variants ahead
of time into the cache (``$JAXCONV_NATIVE_CACHE``, default ``~/.cache/jaxconv/native``): by
default all three, which any x86-64 compiler can build whatever the CPU, so a Docker image or a
cluster's shared environment built on one machine serves CPUs of every kind.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Optional

from jaxconv.ops._native import _build


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="jaxconv native",
                              description="Build the native CPU convolution kernels ahead of time, or say "
                                          "which variant runs here and why.")
  what = p.add_mutually_exclusive_group()
  what.add_argument("--status", action="store_true", help="say which variant runs here and why (the default)")
  what.add_argument("--build", action="store_true", help="compile the variants into the cache now")
  p.add_argument("--isa", action="append", choices=_build.ISAS,
                 help=f"with --build: a variant to build (repeatable; default all of {', '.join(_build.ISAS)})")
  return p


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Runs the command; returns 0, or 1 when a build failed or no variant is available.

  Example:
    >>> from jaxconv.native_cli import build_parser
    >>> build_parser().parse_args(["--build", "--isa", "avx2"]).isa
    ['avx2']
  """
  args = build_parser().parse_args(argv)
  if args.isa and not args.build:
    build_parser().error("--isa goes with --build")
  if args.build:  # the variants at once, one compiler process each
    start = time.perf_counter()
    built = _build.build_many(args.isa or _build.ISAS)
    seconds = time.perf_counter() - start
    for isa, result in built.items():
      if isinstance(result, _build.BuildError):
        print(f"{isa}: FAILED: {result}", file=sys.stderr)
      else:
        print(f"{isa}: {result}")
    print(f"{len(built)} variant(s) in {seconds:.1f} s")
    return 1 if any(isinstance(r, _build.BuildError) for r in built.values()) else 0
  from jaxconv.ops import native_status

  try:
    s = native_status()
  except ValueError as e:
    print(f"jaxconv native: {e}", file=sys.stderr)
    return 2
  print(s)
  return 0 if s.available else 1


if __name__ == "__main__":
  sys.exit(main())
