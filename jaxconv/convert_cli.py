"""``jaxconv convert NAME SRC OUT``: weights between torchvision files and jaxconv runs.

``SRC`` is a torchvision weights file (``.pth``/``.pt``, or ``.safetensors``) or a jaxconv run
(its workdir or checkpoint folder); ``OUT`` is a ``.safetensors`` or ``.pth`` file in
torchvision's layout (``torchvision.models.NAME(num_classes=...).load_state_dict`` takes it
strictly). Every conversion goes through the zoo model ``NAME``, so a file that does not fit it
is an error here, not later. To train from a converted file, pass it to
``jaxconv train --init-from``.

Examples::

  jaxconv convert resnet18 resnet18-f37072fd.pth resnet18.safetensors   # no PyTorch needed later
  jaxconv convert resnet18 runs/resnet18-cifar10 resnet18-cifar10.pth     # a jaxconv run -> torchvision
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Optional


def build_parser() -> argparse.ArgumentParser:
  from jaxconv.models.weights import TORCHVISION_MODELS

  p = argparse.ArgumentParser(
      prog="jaxconv convert",
      description="Convert weights between torchvision files (.pth, .safetensors) and jaxconv runs.",
      epilog="models: " + ", ".join(TORCHVISION_MODELS))
  p.add_argument("name", help="the zoo model (the torchvision builder's name, e.g. resnet18)")
  p.add_argument("src", help="a .pth/.pt/.safetensors file, or a jaxconv run's workdir or checkpoint folder")
  p.add_argument("out", help="the file to write: .safetensors (no PyTorch needed to read it) or .pth")
  return p


def convert(name: str, src: str, out: str) -> dict:
  """Converts ``src`` to ``out`` through the zoo model ``name``; returns what it wrote."""
  from jaxconv.models import (TORCHVISION_MODELS, load_torchvision, read_state_dict, torchvision_state_dict,
                              write_state_dict)

  if name not in TORCHVISION_MODELS:
    raise ValueError(f"{name!r} has no torchvision counterpart; choose one of {', '.join(TORCHVISION_MODELS)}.")
  if Path(out).suffix.lower() not in (".safetensors", ".pth", ".pt"):
    raise ValueError(f"OUT must end in .safetensors, .pth or .pt; got {out!r}.")
  if Path(src).is_dir():
    from jaxconv.train.finetune import load_variables
    variables = load_variables(src)
  else:
    kw = {}
    if name == "googlenet":   # keep the auxiliary heads when the file has them
      kw["aux_logits"] = any(k.startswith("aux1.") for k in read_state_dict(src))
    _, variables = load_torchvision(name, src, **kw)
  state = torchvision_state_dict(name, variables)
  write_state_dict(state, out)
  count = sum(v.size for k, v in state.items() if not k.endswith("num_batches_tracked"))
  return {"tensors": len(state), "values": int(count)}


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Runs ``jaxconv convert``; 0 on success, 2 on bad input."""
  args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
  try:
    info = convert(args.name, args.src, args.out)
  except (ValueError, TypeError, OSError, ImportError) as e:
    print(f"jaxconv convert: error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {args.out}: {args.name}, {info['tensors']} tensors, {info['values']:,} values "
        "(torchvision layout)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
