"""``jaxconv summary MODEL --input-shape 224,224,3 [--format table|json|markdown]``.

Prints a registry model's per-layer output shapes, parameters, multiply-accumulates and receptive
fields (see :func:`jaxconv.summary`). Nothing is allocated: the model is only traced.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from typing import Optional

from jaxconv.summary import FORMATS


def _shape(text: str) -> tuple[int, ...]:
  try:
    shape = tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
  except ValueError:
    raise argparse.ArgumentTypeError(
        f"--input-shape must be comma-separated ints (*spatial, channels), e.g. 224,224,3; got {text!r}."
    ) from None
  if not shape:
    raise argparse.ArgumentTypeError(f"--input-shape must not be empty; got {text!r}.")
  return shape


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="jaxconv summary",
      description="Per-layer shapes, parameters, multiply-accumulates and receptive fields of a model.",
  )
  p.add_argument("model", help="registry name, e.g. resnet18 (see jaxconv.models.list_models())")
  p.add_argument("--input-shape", type=_shape, default=(224, 224, 3),
                 help="one example's shape without batch, *spatial,channels (default 224,224,3)")
  p.add_argument("--format", choices=FORMATS, default="table", help="output format (default table)")
  p.add_argument("--num-classes", type=int, default=None, help="classifier size (default: the model's)")
  p.add_argument("--max-depth", type=int, default=None,
                 help="show modules down to this nesting depth only (default: every leaf module)")
  p.add_argument("--output", default=None, help="write to this file instead of standard output")
  return p


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Runs the command; returns the exit status (0 ok, 2 bad arguments or unknown model).

  Example:
    >>> from jaxconv.summary.cli import build_parser
    >>> args = build_parser().parse_args(["resnet18", "--input-shape", "32,32,3", "--format", "json"])
    >>> args.model, args.input_shape, args.format
    ('resnet18', (32, 32, 3), 'json')
  """
  args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
  from jaxconv import models
  from jaxconv.summary import summary

  kw = {} if args.num_classes is None else {"num_classes": args.num_classes}
  try:
    model = models.create_model(args.model, **kw)
    s = summary(model, args.input_shape, max_depth=args.max_depth)
  except (ValueError, TypeError, KeyError) as e:
    msg = e.args[0] if isinstance(e, KeyError) and e.args else e
    print(f"jaxconv summary: {msg}", file=sys.stderr)
    return 2
  s = dataclasses.replace(s, model=args.model)
  text = {"table": str, "json": lambda s: s.to_json(), "markdown": lambda s: s.to_markdown()}[args.format](s)
  if args.output:
    with open(args.output, "w") as f:
      f.write(text if text.endswith("\n") else text + "\n")
  else:
    print(text)
  return 0
