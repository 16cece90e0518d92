"""Host-side batching: seeded shuffling, padded-and-masked evaluation batches, prefetch to device.

Training order is a pure function of ``(seed, epoch)``, so a run resumed at step ``s`` sees
exactly the batches the uninterrupted run saw (``start`` skips the batches already consumed).
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
  """The example order of one epoch: a permutation of ``range(n)`` determined by (seed, epoch).

  Example:
    >>> (epoch_permutation(5, 0, 1) == epoch_permutation(5, 0, 1)).all()
    np.True_
  """
  return np.random.default_rng([seed, epoch]).permutation(n)


def train_batches(x: np.ndarray, y: np.ndarray, batch_size: int, *, seed: int, epoch: int,
                  start: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Shuffled full batches of one epoch (the last partial batch is dropped).

  Args:
    x: ``[N, ...]`` examples; y: ``[N]`` labels.
    batch_size: examples per batch.
    seed, epoch: determine the order (:func:`epoch_permutation`).
    start: index of the first batch to yield (to resume mid-epoch).

  Yields:
    ``(x_batch [B, ...], y_batch [B])``; ``N // batch_size - start`` of them.

  Example:
    >>> xs = np.arange(10)[:, None]; ys = np.arange(10)
    >>> [len(b[1]) for b in train_batches(xs, ys, 4, seed=0, epoch=0)]
    [4, 4]
    >>> len(list(train_batches(xs, ys, 4, seed=0, epoch=0, start=1)))
    1
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1; got {batch_size}.")
  perm = epoch_permutation(len(x), seed, epoch)
  for i in range(start, len(x) // batch_size):
    idx = perm[i * batch_size:(i + 1) * batch_size]
    yield x[idx], y[idx]


def eval_batches(x: np.ndarray, y: np.ndarray, batch_size: int
                 ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """Batches in order covering every example; the last one is padded and masked.

  Yields:
    ``(x_batch [B, ...], y_batch [B], mask [B] bool)``; padded rows repeat example 0 with
    ``mask=False`` so metrics can ignore them.

  Example:
    >>> xs = np.arange(5)[:, None]; ys = np.arange(5)
    >>> [m.tolist() for _, _, m in eval_batches(xs, ys, 4)]
    [[True, True, True, True], [True, False, False, False]]
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1; got {batch_size}.")
  n = len(x)
  for lo in range(0, n, batch_size):
    hi = min(lo + batch_size, n)
    pad = batch_size - (hi - lo)
    mask = np.arange(batch_size) < hi - lo
    if pad:
      fill = np.zeros(pad, np.int64)
      yield (np.concatenate([x[lo:hi], x[fill]]), np.concatenate([y[lo:hi], y[fill]]), mask)
    else:
      yield x[lo:hi], y[lo:hi], mask


def prefetch(iterator: Iterable[Any], put: Callable[[Any], Any], size: int = 2) -> Iterator[Any]:
  """Keeps ``size`` items already transferred by ``put`` (e.g. ``jax.device_put`` with a sharding).

  JAX transfers are asynchronous, so the next batches copy to the device while the current step
  runs.

  Example:
    >>> list(prefetch(range(4), lambda v: v * 10, size=2))
    [0, 10, 20, 30]
  """
  if size < 1:
    raise ValueError(f"size must be >= 1; got {size}.")
  it = iter(iterator)
  queue = collections.deque(put(b) for b in itertools.islice(it, size))
  while queue:
    current = queue.popleft()
    for b in itertools.islice(it, 1):  # keep `size` batches in flight while `current` is used
      queue.append(put(b))
    yield current
