"""Loss/accuracy curves, learning rate, confusion matrix as PNG files."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def _pyplot():
  try:
    import matplotlib
  except ImportError as e:
    raise ImportError("plots need matplotlib: pip install 'jaxconv[viz]' (from a checkout: pip install -e \".[viz]\")") from e
  matplotlib.use("Agg", force=False)  # files only; never open a window
  import matplotlib.pyplot as plt
  return plt


def plot_metrics(records: Sequence[dict], out_dir: str | os.PathLike) -> list[Path]:
  """Writes ``loss.png``, ``accuracy.png`` and ``lr.png`` from metrics.jsonl-style records.

  Args:
    records: dicts with ``split`` ("train"/"test"), ``step`` and metric values (``loss``,
      ``top1``, ``lr``).
    out_dir: folder for the PNG files.

  Returns:
    The paths written.
  """
  plt = _pyplot()
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  split = {s: [r for r in records if r.get("split") == s] for s in ("train", "test")}
  paths = []
  for name, key, ylabel in (("loss.png", "loss", "cross-entropy"),
                            ("accuracy.png", "top1", "top-1 accuracy"),
                            ("lr.png", "lr", "learning rate")):
    fig, ax = plt.subplots(figsize=(6, 4))
    for s, rs in split.items():
      rs = [r for r in rs if key in r]
      if rs:
        ax.plot([r["step"] for r in rs], [r[key] for r in rs], marker="o" if s == "test" else None,
                markersize=3, label=s)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    if key == "loss":
      ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / name, dpi=100)
    plt.close(fig)
    paths.append(out_dir / name)
  return paths


def plot_confusion_matrix(cm: np.ndarray, class_names: Sequence[str], path: str | os.PathLike) -> Path:
  """Writes a confusion matrix (rows: true class, columns: predicted) as a PNG heat map.

  Example:
    >>> import tempfile, pathlib
    >>> plot_confusion_matrix(np.eye(2, dtype=int), ["a", "b"], pathlib.Path(tempfile.mkdtemp()) / "cm.png").suffix
    '.png'
  """
  plt = _pyplot()
  cm = np.asarray(cm)
  n = cm.shape[0]
  fig, ax = plt.subplots(figsize=(1 + 0.5 * n, 1 + 0.5 * n))
  ax.imshow(cm, cmap="Blues")
  ax.set_xticks(range(n), class_names, rotation=90)
  ax.set_yticks(range(n), class_names)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  if n <= 20:
    for i in range(n):
      for j in range(n):
        ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                color="white" if cm[i, j] > cm.max() / 2 else "black")
  fig.tight_layout()
  path = Path(path)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
