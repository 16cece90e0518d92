"""Dataset sources: all of them end as a :class:`Dataset` of NumPy arrays in host memory.

Images are ``uint8`` ``[N, H, W, C]`` (channels-last), labels ``int32`` ``[N]``. Normalisation and
augmentation happen later, on device (:mod:`jaxconv.data.augment`).

Sources (``load_dataset(name, ...)``):

- ``digits``: scikit-learn's bundled 8x8 handwritten digits (1797 images, no download). Each
  image is resized bilinearly to 24x24 and zero-padded to **28x28** (MNIST's framing: a digit
  in the middle of a 28x28 field), split 80/20 by a fixed seed (1438 train / 359 test).
- ``mnist``, ``fashion_mnist``: the four IDX files (``.gz`` or not) from ``data_dir``, or
  downloaded from the canonical mirrors into the cache with MD5 checks.
- ``cifar10``, ``cifar100``: the Python pickle batches (the extracted folder or the ``.tar.gz``)
  from ``data_dir``, or downloaded.
- ``tfds:<name>``: tensorflow-datasets (optional extra ``jaxconv[tfds]``), read through
  ``tfds.data_source`` (no TensorFlow needed for prepared datasets).
- ``folder``: an image folder, ``data_dir/<class>/*.png|jpg`` (or ``data_dir/train/<class>`` and
  ``data_dir/test/<class>``).
- in-memory arrays: :meth:`Dataset.from_arrays`.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import importlib.util
import os
import pickle
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import numpy as np

from jaxconv.data import _download as _dl


@dataclasses.dataclass
class Dataset:
  """Train and test splits in host memory.

  Attributes:
    name: source name.
    x_train: ``uint8 [N_train, H, W, C]``.
    y_train: ``int32 [N_train]`` in ``[0, num_classes)``.
    x_test: ``uint8 [N_test, H, W, C]``.
    y_test: ``int32 [N_test]``.
    num_classes: number of classes.
    class_names: one name per class.

  Example:
    >>> import numpy as np
    >>> ds = Dataset.from_arrays(np.zeros((4, 8, 8, 1), np.uint8), np.array([0, 1, 0, 1]))
    >>> ds.image_shape, ds.num_classes, len(ds.x_test)
    ((8, 8, 1), 2, 0)
  """
  name: str
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int
  class_names: Sequence[str] = ()

  def __post_init__(self):
    for split in ("train", "test"):
      x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
      if x.ndim != 4:
        raise ValueError(f"x_{split} must be [N, H, W, C]; got shape {x.shape}.")
      if y.shape != (x.shape[0],):
        raise ValueError(f"y_{split} must have shape ({x.shape[0]},) to match x_{split}; got {y.shape}.")
      if y.size and (y.min() < 0 or y.max() >= self.num_classes):
        raise ValueError(f"y_{split} labels must lie in [0, {self.num_classes}); "
                         f"got range [{y.min()}, {y.max()}].")
    if self.x_test.shape[0] and self.x_test.shape[1:] != self.x_train.shape[1:]:
      raise ValueError(f"x_test images {self.x_test.shape[1:]} differ from x_train images "
                       f"{self.x_train.shape[1:]}.")
    if not self.class_names:
      self.class_names = tuple(str(i) for i in range(self.num_classes))

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.x_train.shape[1:])

  def channel_stats(self) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of the training images, in [0, 1] units: two ``[C]`` arrays."""
    c = self.x_train.shape[-1]
    s, s2, n = np.zeros(c), np.zeros(c), 0
    for lo in range(0, len(self.x_train), 4096):  # chunks: CIFAR as float64 at once is 1.2 GB
      x = self.x_train[lo:lo + 4096].reshape(-1, c).astype(np.float64) / 255.0
      s, s2, n = s + x.sum(0), s2 + (x * x).sum(0), n + len(x)
    mean = s / max(n, 1)
    std = np.sqrt(np.maximum(s2 / max(n, 1) - mean * mean, 0.0))
    return mean.astype(np.float32), np.maximum(std, 1e-3).astype(np.float32)

  @classmethod
  def from_arrays(cls, x_train, y_train, x_test=None, y_test=None, *, num_classes: Optional[int] = None,
                  name: str = "arrays", class_names: Sequence[str] = ()) -> "Dataset":
    """In-memory NumPy arrays as a dataset.

    Args:
      x_train: ``[N, H, W, C]`` or ``[N, H, W]``; ``uint8``, or floats in ``[0, 1]`` (scaled to
        ``uint8``).
      y_train: integer labels ``[N]``.
      x_test, y_test: optional test split (empty if omitted).
      num_classes: defaults to ``max(label) + 1``.
    """
    x_train, y_train = _as_images(x_train, "x_train"), _as_labels(y_train, "y_train")
    if x_test is None:
      x_test = np.zeros((0,) + x_train.shape[1:], np.uint8)
      y_test = np.zeros((0,), np.int32)
    x_test, y_test = _as_images(x_test, "x_test"), _as_labels(y_test, "y_test")
    if num_classes is None:
      num_classes = int(max(y_train.max(initial=0), y_test.max(initial=0))) + 1
    return cls(name, x_train, y_train, x_test, y_test, int(num_classes), tuple(class_names))


def _as_images(x, arg: str) -> np.ndarray:
  x = np.asarray(x)
  if x.ndim == 3:
    x = x[..., None]
  if x.ndim != 4:
    raise ValueError(f"{arg} must be [N, H, W, C] or [N, H, W]; got shape {x.shape}.")
  if x.dtype == np.uint8:
    return x
  if np.issubdtype(x.dtype, np.floating):
    if x.size and (x.min() < 0 or x.max() > 1):
      raise ValueError(f"{arg}: float images must lie in [0, 1]; got range [{x.min()}, {x.max()}].")
    return np.round(x * 255).astype(np.uint8)
  raise TypeError(f"{arg} must be uint8 or float in [0, 1]; got dtype {x.dtype}.")


def _as_labels(y, arg: str) -> np.ndarray:
  y = np.asarray(y)
  if not np.issubdtype(y.dtype, np.integer):
    raise TypeError(f"{arg} must hold integer labels; got dtype {y.dtype}.")
  return y.astype(np.int32).reshape(-1)


# --------------------------------------------------------------------------------------------
# digits

def load_digits_dataset() -> Dataset:
  """scikit-learn's 8x8 digits as 28x28 ``uint8`` images (resized to 24x24, padded by 2).

  Example:
    >>> ds = load_digits_dataset()
    >>> ds.x_train.shape, ds.x_test.shape, ds.num_classes
    ((1438, 28, 28, 1), (359, 28, 28, 1), 10)
  """
  images, target = _digits_arrays()
  x = images.astype(np.float32) / 16.0  # [1797, 8, 8] in [0, 1]
  x = _bilinear_resize(x, 24)
  x = np.pad(x, ((0, 0), (2, 2), (2, 2)))
  x = np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)[..., None]
  y = target.astype(np.int32)
  perm = np.random.default_rng(0).permutation(len(y))  # a fixed split, independent of the run seed
  n_test = len(y) // 5
  test, train = perm[:n_test], perm[n_test:]
  return Dataset("digits", x[train], y[train], x[test], y[test], 10)


def _digits_file() -> Optional[Path]:
  """scikit-learn's digits file (1797 rows: 64 pixels in 0..16, then the label), found without
  importing scikit-learn; ``None`` where it is not at its usual place."""
  spec = importlib.util.find_spec("sklearn")
  if spec is None or not spec.submodule_search_locations:
    return None
  path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
  return path if path.is_file() else None


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
  """``images [1797, 8, 8]`` and ``target [1797]``, as ``sklearn.datasets.load_digits`` gives
  them. The file is read directly where it can be: importing ``sklearn.datasets`` takes about
  2 s, paid by every process that trains on digits."""
  path = _digits_file()
  if path is not None:
    rows = np.loadtxt(path, delimiter=",")
    return rows[:, :-1].reshape(-1, 8, 8), rows[:, -1].astype(np.int64)
  from sklearn.datasets import load_digits  # scikit-learn is a dependency; imported on use
  d = load_digits()
  return d.images, d.target


def _bilinear_resize(x: np.ndarray, size: int) -> np.ndarray:
  """[N, h, w] -> [N, size, size], bilinear with half-pixel centres (as jax.image.resize)."""
  def weights(n_in):
    pos = (np.arange(size) + 0.5) * n_in / size - 0.5
    lo = np.clip(np.floor(pos).astype(int), 0, n_in - 1)
    hi = np.clip(lo + 1, 0, n_in - 1)
    frac = np.clip(pos - lo, 0, 1)
    m = np.zeros((size, n_in), np.float32)
    np.add.at(m, (np.arange(size), lo), 1 - frac)
    np.add.at(m, (np.arange(size), hi), frac)
    return m
  mh, mw = weights(x.shape[1]), weights(x.shape[2])
  return np.einsum("ih,nhw,jw->nij", mh, x, mw)


# --------------------------------------------------------------------------------------------
# IDX (MNIST, Fashion-MNIST)

_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

# name -> (mirrors, {file.gz: md5}, class names). MD5s as registered by torchvision.
IDX_SOURCES = {
    "mnist": (
        ("https://ossci-datasets.s3.amazonaws.com/mnist/",
         "https://storage.googleapis.com/cvdf-datasets/mnist/", "http://yann.lecun.com/exdb/mnist/"),
        {"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
         "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
         "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
         "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"},
        tuple(str(i) for i in range(10))),
    "fashion_mnist": (
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        {"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
         "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
         "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
         "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"},
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
         "Bag", "Ankle boot")),
}


# MD5 of each file's uncompressed contents: the same whatever gzip (or none) wraps them. Known
# for MNIST (the well-known digests of the original files); Fashion-MNIST's gzipped files are
# checked against IDX_SOURCES' digests instead.
IDX_CONTENT_MD5 = {
    "mnist": {"train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
              "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
              "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
              "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637"},
}
_IDX_COUNTS = {"train": 60000, "t10k": 10000}


def read_idx(path: str | os.PathLike, *, md5: Optional[str] = None) -> np.ndarray:
  """Reads an IDX file (``.gz`` or raw) of unsigned bytes into an array.

  Args:
    path: the file.
    md5: the expected MD5 of the uncompressed contents, or ``None`` not to check.

  Raises:
    ValueError: naming the file, if the magic number, the dimensions or the length are wrong
      (a corrupt or truncated file).
    ChecksumError: naming the file, if ``md5`` is given and differs.
  """
  path = Path(path)
  opener = gzip.open if path.suffix == ".gz" else open
  try:
    with opener(path, "rb") as f:
      data = f.read()
  except (OSError, EOFError) as e:  # gzip's BadGzipFile is an OSError; truncated gzip -> EOFError
    raise ValueError(f"{path}: cannot read ({e}); the file is corrupt or truncated.") from e
  if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08 or not 1 <= data[3] <= 4:
    raise ValueError(f"{path}: not an IDX file of unsigned bytes (bad magic number {data[:4]!r}).")
  ndim = data[3]
  if len(data) < 4 + 4 * ndim:
    raise ValueError(f"{path}: truncated IDX header.")
  dims = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
  offset, expected = 4 + 4 * ndim, int(np.prod(dims))
  if len(data) - offset != expected:
    raise ValueError(f"{path}: holds {len(data) - offset} bytes of data but its header {dims} "
                     f"says {expected}; the file is corrupt or truncated.")
  if md5 is not None:
    got = hashlib.md5(data).hexdigest()
    if got != md5:
      raise _dl.ChecksumError(f"{path}: its contents are not the official file's (MD5 {got}, expected {md5}). "
                              "Replace it with the original, or pass verify=False (--no-verify) to use a "
                              "modified copy.")
  return np.frombuffer(data, np.uint8, offset=offset).reshape(dims)


def _first_reason(e: BaseException) -> str:
  """The first mirror's reason, short: 'Name or service not known'."""
  text = str(e).split(": ", 1)[-1]
  return text.split(";")[0].strip()


def load_idx_dataset(name: str, data_dir: Optional[str | os.PathLike] = None, *,
                     download: bool = True, cache_dir: Optional[str | os.PathLike] = None,
                     verify: bool = True) -> Dataset:
  """MNIST or Fashion-MNIST from IDX files.

  Local files are checked against the official files (MNIST: the MD5 of each file's contents,
  gzipped or not; Fashion-MNIST: the MD5 of the ``.gz`` files as published) unless ``verify``
  is False, and their contents always are: image and label counts agree (60,000 and 10,000
  with ``verify``), images are 28x28, labels are 0-9.

  Args:
    name: ``"mnist"`` or ``"fashion_mnist"``.
    data_dir: a folder holding the four IDX files (gzipped or not). If None, they are taken from
      (or downloaded into) ``cache_dir/name``.
    download: allow downloading when ``data_dir`` is None and the cache lacks the files.
    cache_dir: defaults to :func:`jaxconv.data.default_cache_dir`.
    verify: check the files against the official ones (``False`` for a modified copy).

  Raises:
    ChecksumError: a file that is not the official one (with ``verify``).
    ValueError: a corrupt file or contents that make no sense (naming the file).
  """
  mirrors, md5s, class_names = IDX_SOURCES[name]
  if data_dir is not None:
    folder, paths = Path(data_dir), {}
    missing = []
    for base in _MNIST_FILES:
      found = [folder / f for f in (base + ".gz", base) if (folder / f).is_file()]
      if found:
        paths[base] = found[0]
      else:
        missing.append(base + "[.gz]")
    if missing:
      raise FileNotFoundError(f"data_dir={str(folder)!r} lacks the {name} files {missing} "
                              f"(expected {[b + '.gz' for b in _MNIST_FILES]}).")
  else:
    folder = Path(cache_dir or _dl.default_cache_dir()) / name
    paths = {}
    for base in _MNIST_FILES:
      fname = base + ".gz"
      if not download and not (folder / fname).is_file():
        raise FileNotFoundError(f"{folder / fname} is not in the cache and download=False; pass "
                                f"data_dir or allow downloading.")
      try:
        paths[base] = _dl.download([m + fname for m in mirrors], folder / fname, md5=md5s[fname])
      except _dl.ChecksumError:
        raise
      except OSError as e:   # no network: say where the files go, and which ones
        files = ", ".join(f"{f} (md5 {h})" for f, h in md5s.items())
        raise OSError(f"could not download {fname} ({_first_reason(e)}). Without a network, put the "
                      f"{name} files {files} into {folder}, or into a folder of your choice given as "
                      "data_dir (--data-dir).") from e
  # Downloads were checked against the published .gz digests already; local files are checked here.
  content_md5 = IDX_CONTENT_MD5.get(name, {}) if verify and data_dir is not None else {}
  if verify and data_dir is not None and not content_md5:
    for b in _MNIST_FILES:  # no digest of the contents is known: the published .gz files'
      if paths[b].suffix == ".gz":
        _dl.check_file(paths[b], md5=md5s[b + ".gz"])
  arrays = [read_idx(paths[b], md5=content_md5.get(b)) for b in _MNIST_FILES]
  x_train, y_train, x_test, y_test = arrays
  for x, y, split in ((x_train, y_train, "train"), (x_test, y_test, "t10k")):
    images, labels = paths[f"{split}-images-idx3-ubyte"], paths[f"{split}-labels-idx1-ubyte"]
    if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0]:
      raise ValueError(f"{images}, {labels}: {split} images {x.shape} and labels {y.shape} do not match.")
    if x.shape[1:] != (28, 28):
      raise ValueError(f"{images}: images are {x.shape[1]}x{x.shape[2]}; {name} images are 28x28.")
    if verify and data_dir is not None and x.shape[0] != _IDX_COUNTS[split]:
      raise ValueError(f"{images}: holds {x.shape[0]} images; the official {split} split has "
                       f"{_IDX_COUNTS[split]} (pass verify=False, --no-verify, for a subset).")
    if y.size and int(y.max()) > 9:
      raise ValueError(f"{labels}: labels must be 0-9; found {int(y.max())}. The file is corrupt "
                       "or not a labels file.")
  return Dataset(name, x_train[..., None], y_train.astype(np.int32), x_test[..., None],
                 y_test.astype(np.int32), 10, class_names)


# --------------------------------------------------------------------------------------------
# CIFAR

# name -> (url, md5, folder inside the archive, train files, test file, label key, meta file, names key)
CIFAR_SOURCES = {
    "cifar10": ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                "c58f30108f718f92721af3b95e74349a", "cifar-10-batches-py",
                tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch", b"labels",
                "batches.meta", b"label_names"),
    "cifar100": ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                 "eb9058c3a382ffc7106e4002c42a8d85", "cifar-100-python", ("train",), "test",
                 b"fine_labels", "meta", b"fine_label_names"),
}


def _unpickle(path: Path) -> dict:
  try:
    with open(path, "rb") as f:
      return pickle.load(f, encoding="bytes")
  except (pickle.UnpicklingError, EOFError, ValueError) as e:
    raise ValueError(f"{path}: cannot unpickle ({e}); the file is corrupt or truncated.") from e


def _cifar_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
  d = _unpickle(path)
  if b"data" not in d or label_key not in d:
    raise ValueError(f"{path}: not a CIFAR batch (keys {sorted(d)[:6]}; expected b'data' and {label_key!r}).")
  data = np.asarray(d[b"data"], np.uint8)
  if data.ndim != 2 or data.shape[1] != 3072 or data.shape[0] != len(d[label_key]):
    raise ValueError(f"{path}: data has shape {data.shape}; expected [N, 3072] with N labels.")
  return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), np.asarray(d[label_key], np.int32)


def load_cifar_dataset(name: str, data_dir: Optional[str | os.PathLike] = None, *,
                       download: bool = True, cache_dir: Optional[str | os.PathLike] = None,
                       verify: bool = True) -> Dataset:
  """CIFAR-10 or CIFAR-100 from the Python pickle batches.

  ``data_dir`` may hold the extracted folder (``cifar-10-batches-py``), its files directly, or
  the ``.tar.gz``; with ``data_dir=None`` the archive is downloaded into the cache and extracted.
  An archive is checked against the official MD5 (unless ``verify`` is False); the batches'
  contents always are (shapes, label range, and with ``verify`` 50,000 + 10,000 images).
  """
  url, md5, sub, train_files, test_file, label_key, meta_file, names_key = CIFAR_SOURCES[name]
  archive_name = url.rsplit("/", 1)[1]
  if data_dir is not None:
    base = Path(data_dir)
    if (base / sub).is_dir():
      folder = base / sub
    elif (base / test_file).is_file():
      folder = base
    elif (base / archive_name).is_file():
      folder = _extract(base / archive_name, md5 if verify else None, base / ".extracted", sub)
    else:
      raise FileNotFoundError(
          f"data_dir={str(base)!r} holds none of: the folder {sub}/, the files "
          f"{list(train_files) + [test_file]}, or the archive {archive_name}.")
  else:
    cache = Path(cache_dir or _dl.default_cache_dir()) / name
    if not download and not (cache / archive_name).is_file():
      raise FileNotFoundError(f"{cache / archive_name} is not in the cache and download=False.")
    archive = _dl.download(url, cache / archive_name, md5=md5)
    folder = _extract(archive, None, cache, sub)
  missing = [f for f in (*train_files, test_file) if not (folder / f).is_file()]
  if missing:
    raise FileNotFoundError(f"{folder} lacks the {name} files {missing}.")
  parts = [_cifar_batch(folder / f, label_key) for f in train_files]
  x_train = np.concatenate([p[0] for p in parts])
  y_train = np.concatenate([p[1] for p in parts])
  x_test, y_test = _cifar_batch(folder / test_file, label_key)
  num_classes = 10 if name == "cifar10" else 100
  for y, f in ((y_train, folder / train_files[0]), (y_test, folder / test_file)):
    if y.size and (int(y.min()) < 0 or int(y.max()) >= num_classes):
      raise ValueError(f"{f}: labels must be 0-{num_classes - 1}; found {int(y.min())}..{int(y.max())}.")
  if verify and (len(y_train), len(y_test)) != (50000, 10000):
    raise ValueError(f"{folder}: holds {len(y_train)} train and {len(y_test)} test images; the official "
                     f"{name} has 50000 and 10000 (pass verify=False, --no-verify, for a subset).")
  names: Sequence[str] = ()
  if (folder / meta_file).is_file():
    names = tuple(n.decode() for n in _unpickle(folder / meta_file).get(names_key, ()))
  return Dataset(name, x_train, y_train, x_test, y_test, num_classes, names)


def _extract(archive: Path, md5: Optional[str], dest: Path, sub: str) -> Path:
  if (dest / sub).is_dir():
    return dest / sub
  if md5:
    _dl.check_file(archive, md5=md5)
  tmp = dest / (sub + ".partial")
  try:
    with tarfile.open(archive, "r:gz") as tar:
      tar.extractall(tmp, filter="data")
  except (tarfile.TarError, EOFError, OSError) as e:
    raise ValueError(f"{archive}: cannot extract ({e}); the archive is corrupt or truncated.") from e
  if not (tmp / sub).is_dir():
    raise ValueError(f"{archive}: does not contain the folder {sub}/.")
  os.replace(tmp / sub, dest / sub)
  return dest / sub


# --------------------------------------------------------------------------------------------
# tensorflow-datasets

def load_tfds_dataset(name: str, data_dir: Optional[str | os.PathLike] = None, *,
                      download: bool = False, train_split: str = "train",
                      test_split: str = "test") -> Dataset:
  """A tensorflow-datasets image classification dataset (``image``/``label`` features).

  Reads through ``tfds.data_source`` (random access, NumPy, no TensorFlow for datasets prepared
  as ``array_record``). Needs the optional extra: ``pip install 'jaxconv[tfds]'``.
  """
  _hide_gpus_from_tensorflow()
  try:
    import tensorflow_datasets as tfds
  except ImportError as e:
    raise ImportError("dataset 'tfds:...' needs tensorflow-datasets: pip install 'jaxconv[tfds]'") from e
  kw = {"data_dir": os.fspath(data_dir)} if data_dir is not None else {}
  try:
    builder = tfds.builder(name, **kw)
  except Exception as e:  # tfds raises its own DatasetNotFoundError with the list of names
    raise ValueError(f"tensorflow-datasets has no dataset {name!r}: {e}") from e
  def open_splits():
    return [tfds.data_source(name, split=s, download=False, **kw) for s in (train_split, test_split)]

  try:
    try:
      sources = open_splits()
    except (AssertionError, NotImplementedError, FileNotFoundError):
      if not download:
        raise
      builder.download_and_prepare(file_format="array_record")  # needs network (and often TF)
      sources = open_splits()
  except (AssertionError, NotImplementedError, FileNotFoundError) as e:
    raise FileNotFoundError(
        f"tensorflow-datasets dataset {name!r} is not prepared in "
        f"{kw.get('data_dir', '~/tensorflow_datasets')}. Prepare it (with file_format="
        f"'array_record') via `tfds build {name} --file_format=array_record`, or pass download=True.") from e
  features = builder.info.features
  if "image" not in features or "label" not in features:
    raise ValueError(f"tfds:{name} has features {list(features)}; expected 'image' and 'label'.")
  num_classes = features["label"].num_classes
  arrays = []
  for src in sources:
    records = [src[i] for i in range(len(src))]
    x = np.stack([np.asarray(r["image"], np.uint8) for r in records]) if records else np.zeros((0, 1, 1, 1), np.uint8)
    arrays += [x if x.ndim == 4 else x[..., None], np.array([r["label"] for r in records], np.int32)]
  names = tuple(features["label"].names) if getattr(features["label"], "names", None) else ()
  return Dataset(f"tfds:{name}", *arrays, num_classes, names)


def _hide_gpus_from_tensorflow() -> None:
  """TensorFlow (which tfds may import) must not take accelerator memory from JAX."""
  import importlib.util
  if importlib.util.find_spec("tensorflow") is None:
    return
  import tensorflow as tf  # optional; only when installed
  tf.config.set_visible_devices([], "GPU")


# --------------------------------------------------------------------------------------------
# image folders

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


def load_image_folder(data_dir: str | os.PathLike, *, image_size: Optional[int] = None,
                      test_fraction: float = 0.2, seed: int = 0) -> Dataset:
  """Images in ``data_dir/<class>/`` (or ``data_dir/{train,test}/<class>/``), class per folder.

  Classes are the sorted sub-folder names. Without ``train``/``test`` folders, a fixed fraction
  (by ``seed``) is held out for test. Images are converted to RGB (or kept grayscale if all are
  grayscale) and resized to ``image_size`` (default: the first image's size). Needs Pillow.
  """
  root = Path(data_dir)
  if not root.is_dir():
    raise FileNotFoundError(f"data_dir={str(root)!r} is not a folder.")
  from PIL import Image  # optional dependency (jaxconv[tfds] installs Pillow)

  def scan(folder: Path) -> dict[str, list[Path]]:
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    return {c: sorted(f for f in (folder / c).iterdir() if f.suffix.lower() in _IMAGE_SUFFIXES)
            for c in classes}

  split = (root / "train").is_dir() and (root / "test").is_dir()
  train_files = scan(root / "train") if split else scan(root)
  classes = sorted(train_files)
  if not classes or not any(train_files.values()):
    raise FileNotFoundError(f"data_dir={str(root)!r} has no class sub-folders with images "
                            f"({'/'.join(_IMAGE_SUFFIXES)}); expected data_dir/<class>/<image>.")
  empty = [c for c in classes if not train_files[c]]
  if empty:  # a class with no training image would silently shrink or shift the label set
    where = root / "train" if split else root
    raise ValueError(f"class folder(s) {', '.join(str(where / c) for c in empty)} hold no images "
                     f"({'/'.join(_IMAGE_SUFFIXES)}); add images or remove the folder(s).")

  def load(files: dict[str, list[Path]]):
    xs, ys = [], []
    for label, c in enumerate(classes):
      for f in files.get(c, []):
        try:
          img = Image.open(f)
          img.load()
        except Exception as e:  # Pillow raises several types for damaged files
          raise ValueError(f"{f}: cannot decode image ({e}).") from e
        xs.append(img)
        ys.append(label)
    return xs, np.array(ys, np.int32)

  imgs, y = load(train_files)
  size = image_size or imgs[0].size[0]
  test_imgs, y_test = load(scan(root / "test")) if split else ([], np.zeros((0,), np.int32))
  gray = all(im.mode in ("L", "1", "I;16") for im in imgs + test_imgs)

  def to_array(ims):
    c = 1 if gray else 3
    if not ims:
      return np.zeros((0, size, size, c), np.uint8)
    arr = [np.asarray(im.convert("L" if gray else "RGB").resize((size, size)), np.uint8) for im in ims]
    a = np.stack(arr)
    return a[..., None] if gray else a

  x, x_test = to_array(imgs), to_array(test_imgs)
  if not split:
    perm = np.random.default_rng(seed).permutation(len(y))
    n_test = int(round(len(y) * test_fraction))
    x, y, x_test, y_test = x[perm[n_test:]], y[perm[n_test:]], x[perm[:n_test]], y[perm[:n_test]]
  return Dataset(f"folder:{root.name}", x, y, x_test, y_test, len(classes), tuple(classes))


# --------------------------------------------------------------------------------------------
# the registry

DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "folder", "tfds:<name>")


def load_dataset(name: str, data_dir: Optional[str | os.PathLike] = None, *, download: bool = True,
                 cache_dir: Optional[str | os.PathLike] = None, verify: bool = True) -> Dataset:
  """Loads a dataset by name (see the module docstring for the sources).

  Args:
    name: one of :data:`DATASETS`.
    data_dir: local files (required for ``folder``; optional for mnist/fashion_mnist/cifar, which
      otherwise use the download cache; a tfds ``data_dir`` for ``tfds:<name>``).
    download: allow downloads into the cache.
    cache_dir: the download cache (default ``$JAXCONV_DATA`` or ``~/.cache/jaxconv/data``).
    verify: check local MNIST/CIFAR files against the official checksums and counts (``False``
      for a modified copy; contents are sanity-checked either way).

  Raises:
    ValueError: unknown name (the message lists the valid ones).

  Example:
    >>> load_dataset("digits").num_classes
    10
  """
  if not isinstance(name, str):
    raise TypeError(f"dataset must be a string; got {type(name).__name__}.")
  if name == "digits":
    return load_digits_dataset()
  if name in IDX_SOURCES:
    return load_idx_dataset(name, data_dir, download=download, cache_dir=cache_dir, verify=verify)
  if name in CIFAR_SOURCES:
    return load_cifar_dataset(name, data_dir, download=download, cache_dir=cache_dir, verify=verify)
  if name.startswith("tfds:") and len(name) > 5:
    return load_tfds_dataset(name[5:], data_dir, download=download)
  if name == "folder" or name.startswith("folder:"):
    path = name[7:] if name.startswith("folder:") else data_dir
    if path is None:
      raise ValueError("dataset 'folder' needs data_dir (or name it 'folder:<path>').")
    return load_image_folder(path)
  raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}.")
