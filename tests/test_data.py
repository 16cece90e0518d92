"""Data: sources (digits, IDX, CIFAR pickles, tfds mock, image folders, arrays), checked
downloads against a local HTTP server, seeded batching, masked eval batches, augmentation."""

import contextlib
import gzip
import hashlib
import http.server
import pickle
import tarfile
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxconv import data
from jaxconv.data import sources
from jaxconv.data import ChecksumError, download


# ---------------------------------------------------------------------------------- helpers

def write_idx(path, arr, compress=True):
  arr = np.asarray(arr, np.uint8)
  header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
  raw = header + arr.tobytes()
  path.write_bytes(gzip.compress(raw) if compress else raw)
  return raw


def make_mnist_dir(folder, rng, n_train=12, n_test=5, compress=True):
  folder.mkdir(parents=True, exist_ok=True)
  arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
            "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
            "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
            "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test)}
  for name, a in arrays.items():
    write_idx(folder / (name + (".gz" if compress else "")), a, compress)
  return arrays


@contextlib.contextmanager
def http_server(files: dict):
  """Serves ``files`` ({path: bytes}) on 127.0.0.1; '/cut/...' sends half the bytes, then hangs up."""
  class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
      path = self.path
      cut = path.startswith("/cut/")
      body = files.get(path[4:] if cut else path)
      if body is None:
        self.send_error(404)
        return
      self.send_response(200)
      self.send_header("Content-Length", str(len(body)))
      self.end_headers()
      self.wfile.write(body[: len(body) // 2] if cut else body)
      if cut:
        self.close_connection = True

    def log_message(self, *args):
      pass

  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  try:
    yield f"http://127.0.0.1:{server.server_address[1]}"
  finally:
    server.shutdown()
    server.server_close()


# ---------------------------------------------------------------------------------- digits

def test_digits_is_real_resized_and_split_deterministically():
  from sklearn.datasets import load_digits
  ds = data.load_dataset("digits")
  assert ds.x_train.shape == (1438, 28, 28, 1) and ds.x_test.shape == (359, 28, 28, 1)
  assert ds.x_train.dtype == np.uint8 and ds.num_classes == 10
  assert (ds.x_train[:, :2].max() == 0) and (ds.x_train[:, -2:].max() == 0)  # 2-pixel frame
  # the 24x24 interior is the bilinear resize of the 8x8 original (jax.image as the reference)
  d = load_digits()
  perm = np.random.default_rng(0).permutation(1797)
  orig = d.images[perm[359:]] / 16
  want = jax.image.resize(jnp.asarray(orig, jnp.float32), (len(orig), 24, 24), "bilinear")
  inner = ds.x_train[:, 2:26, 2:26, 0].astype(np.float64) / 255
  np.testing.assert_allclose(inner, np.clip(want, 0, 1), atol=0.5 / 255 + 1e-6)
  np.testing.assert_array_equal(ds.y_train, d.target[perm[359:]])
  np.testing.assert_array_equal(data.load_dataset("digits").x_test, ds.x_test)


def test_digits_read_directly_or_through_scikit_learn_are_the_same(monkeypatch):
  from sklearn.datasets import load_digits

  from jaxconv.data import sources
  assert sources._digits_file() is not None  # the fast path is the one taken here
  d = load_digits()
  direct = sources._digits_arrays()
  monkeypatch.setattr(sources, "_digits_file", lambda: None)  # as if the file had moved
  for images, target in (direct, sources._digits_arrays()):
    np.testing.assert_array_equal(images, d.images)
    np.testing.assert_array_equal(target, d.target)


def test_unknown_dataset_lists_valid_names():
  with pytest.raises(ValueError, match=r"unknown dataset 'mnits'; choose one of digits, mnist, "
                                       r"fashion_mnist, cifar10, cifar100, folder, tfds:<name>"):
    data.load_dataset("mnits")


# ---------------------------------------------------------------------------------- IDX

@pytest.mark.parametrize("compress", [True, False])
def test_idx_from_data_dir(tmp_path, rng, compress):
  arrays = make_mnist_dir(tmp_path, rng, compress=compress)
  ds = data.load_dataset("mnist", tmp_path, verify=False)  # not the official files
  np.testing.assert_array_equal(ds.x_train[..., 0], arrays["train-images-idx3-ubyte"])
  np.testing.assert_array_equal(ds.y_test, arrays["t10k-labels-idx1-ubyte"])
  assert ds.x_test.shape == (5, 28, 28, 1)


def test_idx_data_dir_missing_files_named(tmp_path, rng):
  make_mnist_dir(tmp_path, rng)
  (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
  with pytest.raises(FileNotFoundError, match=r"lacks the mnist files \['t10k-labels-idx1-ubyte\[.gz\]'\]"):
    data.load_dataset("mnist", tmp_path)


def test_idx_truncated_and_corrupt(tmp_path, rng):
  make_mnist_dir(tmp_path, rng)
  raw = gzip.decompress((tmp_path / "train-images-idx3-ubyte.gz").read_bytes())
  (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw[:-100]))
  with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.gz: holds 9308 bytes of data but its "
                                       r"header \(12, 28, 28\) says 9408; .*truncated"):
    data.load_dataset("mnist", tmp_path)
  (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw)[:200])  # cut gzip stream
  with pytest.raises(ValueError, match=r"cannot read .* corrupt or truncated"):
    data.load_dataset("mnist", tmp_path)
  (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x0d\x03" + raw[4:]))
  with pytest.raises(ValueError, match=r"bad magic number"):
    data.load_dataset("mnist", tmp_path)


def test_idx_files_are_checked_against_the_official_ones(tmp_path, rng):
  """A file with a valid header and random pixels is not MNIST: named, with the way out."""
  make_mnist_dir(tmp_path, rng)
  with pytest.raises(ChecksumError, match=r"train-images-idx3-ubyte.gz: its contents are not the official "
                                          r"file's \(MD5 .*expected 6bbc9ace898e44ae57da46a324031adb\).*--no-verify"):
    data.load_dataset("mnist", tmp_path)
  # Contents are checked with or without verify: labels outside 0-9, images of another size.
  labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
  raw = bytearray(gzip.decompress(labels.read_bytes()))
  raw[-1] = 12
  labels.write_bytes(gzip.compress(bytes(raw)))
  with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte.gz: labels must be 0-9; found 12"):
    data.load_dataset("mnist", tmp_path, verify=False)
  # Fashion-MNIST: the published .gz digests.
  with pytest.raises(ChecksumError, match=r"train-images-idx3-ubyte.gz: md5 checksum mismatch \(expected "
                                          r"8d4fb7e6c68d591d4c3dfef9ec88bf0d"):
    data.load_dataset("fashion_mnist", tmp_path)


# ---------------------------------------------------------------------------------- downloads

def test_download_good_corrupt_interrupted_and_mirror_fallback(tmp_path):
  body = bytes(range(256)) * 400
  md5 = hashlib.md5(body).hexdigest()
  sha = hashlib.sha256(body).hexdigest()
  cache = tmp_path / "cache"
  with http_server({"/f.bin": body, "/bad.bin": body[:-1] + b"x"}) as url:
    out = download(url + "/f.bin", cache / "f.bin", md5=md5, sha256=sha)
    assert out.read_bytes() == body
    # corrupt: checksum error, nothing left in the cache
    with pytest.raises(ChecksumError, match=r"md5 checksum mismatch \(expected " + md5):
      download(url + "/bad.bin", cache / "g.bin", md5=md5)
    assert sorted(p.name for p in cache.iterdir()) == ["f.bin"]
    # interrupted: the server hangs up half-way; no partial file
    with pytest.raises(OSError, match=r"could not download h.bin"):
      download(url + "/cut/f.bin", cache / "h.bin", md5=md5)
    assert sorted(p.name for p in cache.iterdir()) == ["f.bin"]
    # a dead mirror (404) is skipped
    out = download([url + "/missing.bin", url + "/f.bin"], cache / "i.bin", md5=md5)
    assert out.read_bytes() == body
    # a corrupt cached copy is replaced
    (cache / "i.bin").write_bytes(b"junk")
    assert download(url + "/f.bin", cache / "i.bin", md5=md5).read_bytes() == body


def test_mnist_download_into_cache(tmp_path, rng, monkeypatch):
  src = tmp_path / "src"
  make_mnist_dir(src, rng)
  files = {f"/mnist/{p.name}": p.read_bytes() for p in src.iterdir()}
  md5s = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in src.iterdir()}
  with http_server(files) as url:
    monkeypatch.setitem(sources.IDX_SOURCES, "mnist", ((url + "/nothing/", url + "/mnist/"), md5s,
                                                       sources.IDX_SOURCES["mnist"][2]))
    ds = data.load_dataset("mnist", cache_dir=tmp_path / "cache")
  np.testing.assert_array_equal(ds.x_train, data.load_dataset("mnist", src, verify=False).x_train)
  assert sorted(p.name for p in (tmp_path / "cache" / "mnist").iterdir()) == sorted(md5s)
  # offline afterwards: served from the cache
  assert data.load_dataset("mnist", cache_dir=tmp_path / "cache", download=False).y_train.shape == (12,)
  with pytest.raises(FileNotFoundError, match=r"not in the cache and download=False"):
    data.load_dataset("fashion_mnist", cache_dir=tmp_path / "cache", download=False)
  # No network: one message with where the files go, their names and checksums.
  with http_server({}) as url:
    monkeypatch.setitem(sources.IDX_SOURCES, "mnist", ((url + "/gone/",), md5s, sources.IDX_SOURCES["mnist"][2]))
    with pytest.raises(OSError, match=r"could not download train-images-idx3-ubyte.gz .*Without a network, put the "
                                      r"mnist files .*-ubyte.gz \(md5 [0-9a-f]{32}\), .* into "
                                      r".*offline.mnist, or into a folder of your choice given as data_dir"):
      data.load_dataset("mnist", cache_dir=tmp_path / "offline")


# ---------------------------------------------------------------------------------- CIFAR

def make_cifar(folder, rng, hundred=False):
  folder.mkdir(parents=True)
  label_key = b"fine_labels" if hundred else b"labels"
  names = ["train"] if hundred else [f"data_batch_{i}" for i in range(1, 6)]
  out = {}
  for name in names + ["test"] if hundred else names + ["test_batch"]:
    x = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
    y = rng.integers(0, 100 if hundred else 10, 4).tolist()
    (folder / name).write_bytes(pickle.dumps({b"data": x, label_key: y}))
    out[name] = (x, y)
  meta = {b"fine_label_names": [f"c{i}".encode() for i in range(100)]} if hundred else \
      {b"label_names": [f"c{i}".encode() for i in range(10)]}
  (folder / ("meta" if hundred else "batches.meta")).write_bytes(pickle.dumps(meta))
  return out


def test_cifar10_from_folder_and_archive(tmp_path, rng):
  raw = make_cifar(tmp_path / "d" / "cifar-10-batches-py", rng)
  with pytest.raises(ValueError, match=r"holds 20 train and 4 test images; the official cifar10 has 50000 "
                                       r"and 10000 \(pass verify=False, --no-verify, for a subset\)"):
    data.load_dataset("cifar10", tmp_path / "d")
  ds = data.load_dataset("cifar10", tmp_path / "d", verify=False)
  assert ds.x_train.shape == (20, 32, 32, 3) and ds.class_names[3] == "c3"
  x0, y0 = raw["data_batch_1"]
  # channel-first rows [R(1024) G(1024) B(1024)] -> NHWC
  np.testing.assert_array_equal(ds.x_train[0, 0, 1], [x0[0, 1], x0[0, 1025], x0[0, 2049]])
  np.testing.assert_array_equal(ds.y_train[:4], y0)
  arch = tmp_path / "a"
  arch.mkdir()
  with tarfile.open(arch / "cifar-10-python.tar.gz", "w:gz") as tar:
    tar.add(tmp_path / "d" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
  monkey = sources.CIFAR_SOURCES["cifar10"]
  md5 = hashlib.md5((arch / "cifar-10-python.tar.gz").read_bytes()).hexdigest()
  sources.CIFAR_SOURCES["cifar10"] = (monkey[0], md5) + monkey[2:]
  try:
    ds2 = data.load_dataset("cifar10", arch, verify=False)
  finally:
    sources.CIFAR_SOURCES["cifar10"] = monkey
  arch2 = tmp_path / "a2"
  arch2.mkdir()
  (arch2 / "cifar-10-python.tar.gz").write_bytes((arch / "cifar-10-python.tar.gz").read_bytes())
  with pytest.raises(ChecksumError, match=r"cifar-10-python.tar.gz: md5 checksum mismatch"):
    data.load_dataset("cifar10", arch2)  # the official archive's MD5
  np.testing.assert_array_equal(ds2.x_test, ds.x_test)


def test_cifar100_and_corrupt_pickle(tmp_path, rng):
  make_cifar(tmp_path / "cifar-100-python", rng, hundred=True)
  ds = data.load_dataset("cifar100", tmp_path, verify=False)
  assert ds.num_classes == 100 and ds.x_train.shape == (4, 32, 32, 3)
  (tmp_path / "cifar-100-python" / "test").write_bytes(pickle.dumps({b"data": 1})[:-3])
  with pytest.raises(ValueError, match=r"test: cannot unpickle .* corrupt or truncated"):
    data.load_dataset("cifar100", tmp_path, verify=False)


def test_cifar_missing_files(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"holds none of: the folder cifar-10-batches-py/"):
    data.load_dataset("cifar10", tmp_path)


# ---------------------------------------------------------------------------------- tfds, folders, arrays

def test_tfds_mock_data(tmp_path):
  import tensorflow_datasets as tfds  # in the [dev] extra that CI installs
  with tfds.testing.mock_data(num_examples=6):
    ds = data.load_dataset("tfds:mnist")
  assert ds.name == "tfds:mnist" and ds.num_classes == 10
  assert ds.x_train.shape == (6, 28, 28, 1) and ds.x_train.dtype == np.uint8
  assert ds.y_train.dtype == np.int32 and ds.y_train.max() < 10
  with pytest.raises(ValueError, match=r"tensorflow-datasets has no dataset 'not_a_dataset'"):
    data.load_dataset("tfds:not_a_dataset")
  with pytest.raises(FileNotFoundError, match=r"dataset 'mnist' is not prepared in .*tfds build mnist"):
    data.load_dataset("tfds:mnist", tmp_path, download=False)


def test_image_folder(tmp_path, rng):
  from PIL import Image
  for c in ("cat", "dog"):
    (tmp_path / c).mkdir()
    for i in range(5):
      Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(tmp_path / c / f"{i}.png")
  ds = data.load_dataset("folder", tmp_path)
  assert ds.class_names == ("cat", "dog") and ds.x_train.shape == (8, 6, 6, 3) and len(ds.x_test) == 2
  got = np.concatenate([ds.x_train, ds.x_test])
  want = np.stack([np.asarray(Image.open(tmp_path / c / f"{i}.png")) for c in ("cat", "dog") for i in range(5)])
  assert sorted(map(bytes, got)) == sorted(map(bytes, want))  # same images, split by seed
  (tmp_path / "dog" / "bad.png").write_bytes(b"not a png")
  with pytest.raises(ValueError, match=r"bad.png: cannot decode image"):
    data.load_dataset("folder", tmp_path)
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match=r"has no class sub-folders with images"):
    data.load_dataset("folder", tmp_path / "empty")
  # A class folder without images would train a model with one class fewer: refused, named.
  (tmp_path / "dog" / "bad.png").unlink()
  (tmp_path / "empty" / "notes.txt").write_text("no images here")
  with pytest.raises(ValueError, match=r"class folder\(s\) .*/empty hold no images"):
    data.load_dataset("folder", tmp_path)


def test_from_arrays_validation():
  ds = data.Dataset.from_arrays(np.ones((3, 4, 4)) * 0.5, np.array([0, 2, 1]))
  assert ds.x_train.shape == (3, 4, 4, 1) and ds.x_train[0, 0, 0, 0] == 128 and ds.num_classes == 3
  with pytest.raises(ValueError, match=r"x_train: float images must lie in \[0, 1\]"):
    data.Dataset.from_arrays(np.full((2, 4, 4), 3.0), np.array([0, 1]))
  with pytest.raises(ValueError, match=r"y_train must have shape \(2,\)"):
    data.Dataset.from_arrays(np.zeros((2, 4, 4), np.uint8), np.array([0, 1, 1]))
  with pytest.raises(ValueError, match=r"y_train labels must lie in \[0, 2\)"):
    data.Dataset.from_arrays(np.zeros((2, 4, 4), np.uint8), np.array([0, 2]), num_classes=2)


# ---------------------------------------------------------------------------------- batching

def test_train_batches_seeded_permutation_and_resume():
  x, y = np.arange(50)[:, None], np.arange(50)
  e0 = [b[1] for b in data.train_batches(x, y, 8, seed=3, epoch=0)]
  assert len(e0) == 6 and all(len(b) == 8 for b in e0)
  seen = np.concatenate(e0)
  assert len(set(seen.tolist())) == 48  # each example at most once; 2 dropped
  again = [b[1] for b in data.train_batches(x, y, 8, seed=3, epoch=0)]
  assert all((a == b).all() for a, b in zip(e0, again))
  e1 = np.concatenate([b[1] for b in data.train_batches(x, y, 8, seed=3, epoch=1)])
  other_seed = np.concatenate([b[1] for b in data.train_batches(x, y, 8, seed=4, epoch=0)])
  assert not (e1 == seen).all() and not (other_seed == seen).all()
  tail = [b[1] for b in data.train_batches(x, y, 8, seed=3, epoch=0, start=4)]
  assert len(tail) == 2 and all((a == b).all() for a, b in zip(tail, e0[4:]))
  for xb, yb in data.train_batches(x, y, 8, seed=3, epoch=0):
    np.testing.assert_array_equal(xb[:, 0], yb)


def test_eval_batches_cover_every_example_once():
  x, y = np.arange(23)[:, None] * 10, np.arange(23)
  batches = list(data.eval_batches(x, y, 8))
  assert [len(b[0]) for b in batches] == [8, 8, 8]
  kept = np.concatenate([yb[m] for _, yb, m in batches])
  np.testing.assert_array_equal(kept, y)
  assert batches[-1][2].sum() == 7


def test_prefetch_keeps_order_and_transfers_ahead():
  calls = []
  it = data.prefetch(iter(range(5)), lambda v: calls.append(v) or v * 2, size=2)
  assert next(it) == 0 and calls == [0, 1, 2]  # two batches ahead of the one handed out
  assert list(it) == [2, 4, 6, 8]


# ---------------------------------------------------------------------------------- augmentation

def test_random_crop_is_a_window_of_the_padded_image(rng):
  x = rng.integers(1, 255, (6, 5, 7, 2)).astype(np.float32)
  out = np.asarray(data.random_crop(jax.random.key(0), jnp.asarray(x), 2))
  padded = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
  offsets = []
  for i in range(6):
    hits = [(a, b) for a in range(5) for b in range(5)
            if (padded[i, a:a + 5, b:b + 7] == out[i]).all()]
    assert hits, i
    offsets.append(hits[0])
  assert len(set(offsets)) > 1  # per-example offsets
  again = np.asarray(data.random_crop(jax.random.key(0), jnp.asarray(x), 2))
  np.testing.assert_array_equal(out, again)


def test_random_flip_and_normalize(rng):
  x = rng.integers(0, 255, (64, 3, 4, 3)).astype(np.uint8)
  out = np.asarray(data.random_flip(jax.random.key(2), jnp.asarray(x)))
  flipped = np.array([(o == xi[:, ::-1]).all() and not (o == xi).all() for o, xi in zip(out, x)])
  same = np.array([(o == xi).all() for o, xi in zip(out, x)])
  assert (flipped | same).all() and 16 < flipped.sum() < 48
  mean, std = np.float32([0.1, 0.2, 0.3]), np.float32([0.5, 0.6, 0.7])
  np.testing.assert_allclose(data.normalize(x, mean, std), (x / 255.0 - mean) / std, rtol=1e-5, atol=1e-6)
  assert data.normalize(x, mean, std, jnp.bfloat16).dtype == jnp.bfloat16


@pytest.mark.parametrize("shape", [(5, 9, 9, 2), (4, 8, 11, 1)])
def test_affine_warp_matches_scipy(rng, shape):
  from scipy import ndimage

  x = rng.uniform(0, 255, shape).astype(np.float32)
  angle = rng.uniform(-np.pi, np.pi, shape[0]).astype(np.float32)
  scale = rng.uniform(0.7, 1.3, shape[0]).astype(np.float32)
  out = np.asarray(data.affine_warp(x, angle, scale))
  c = (np.array(shape[1:3]) - 1) / 2.0
  for n in range(shape[0]):
    cos, sin = np.cos(angle[n]), np.sin(angle[n])
    m = np.array([[cos, sin], [-sin, cos]]) / scale[n]  # output (row, col) -> input (row, col)
    for ch in range(shape[3]):
      want = ndimage.affine_transform(x[n, :, :, ch].astype(np.float64), m, offset=c - m @ c, order=1,
                                      mode="grid-constant", cval=0.0)
      np.testing.assert_allclose(out[n, :, :, ch], want, rtol=1e-4, atol=1e-2)


def test_affine_warp_closed_forms(rng):
  x = rng.uniform(0, 1, (3, 6, 6, 2)).astype(np.float32)
  ones = np.ones(3, np.float32)
  np.testing.assert_allclose(data.affine_warp(x, 0 * ones, ones), x, atol=1e-6)   # identity
  quarter = np.asarray(data.affine_warp(x, np.float32(np.pi / 2) * ones, ones))
  np.testing.assert_allclose(quarter, np.rot90(x, 1, axes=(1, 2)), atol=1e-5)   # counter-clockwise
  # Zooming out by 2 about the centre of a 6x6 constant image leaves its middle 3x3 (and a
  # bilinear rim) lit and zeros at the corners.
  zoomed = np.asarray(data.affine_warp(np.ones((1, 6, 6, 1), np.float32), np.zeros(1), np.full(1, 0.5)))
  assert zoomed[0, 0, 0, 0] == 0 and zoomed[0, 2, 2, 0] == 1 and zoomed[0, 3, 3, 0] == 1


def test_random_affine_draws_per_example_within_bounds(rng):
  x = jnp.asarray(rng.integers(0, 255, (16, 12, 12, 1)).astype(np.uint8))
  assert data.random_affine(jax.random.key(0), x) is x  # both off: untouched
  out = np.asarray(data.random_affine(jax.random.key(0), x, rotate=15, scale=0.1))
  assert out.dtype == np.float32 and out.shape == x.shape
  np.testing.assert_array_equal(out, data.random_affine(jax.random.key(0), x, rotate=15, scale=0.1))
  # Recover each example's draw: it must be one of the warps allowed by the bounds.
  k1, k2 = jax.random.split(jax.random.key(0))
  angle = np.asarray(jax.random.uniform(k1, (16,), minval=-15, maxval=15)) * np.pi / 180
  zoom = np.asarray(jax.random.uniform(k2, (16,), minval=0.9, maxval=1.1))
  assert np.abs(angle).max() <= np.radians(15) and len(set(angle.round(4))) == 16
  np.testing.assert_allclose(out, data.affine_warp(x, angle, zoom), rtol=1e-5, atol=1e-3)
  for kw, match in (({"rotate": -1}, r"rotate must be >= 0 degrees .* got rotate=-1"),
                    ({"scale": 1.0}, r"scale in \[0, 1\); got rotate=0.0, scale=1.0")):
    with pytest.raises(ValueError, match=match):
      data.random_affine(jax.random.key(0), x, **kw)


def test_channel_stats_match_numpy_across_chunks(rng):
  x = rng.integers(0, 256, (9000, 3, 3, 3), dtype=np.uint8)  # more than one 4096-image chunk
  mean, std = data.Dataset.from_arrays(x, np.zeros(9000, int)).channel_stats()
  flat = x.reshape(-1, 3) / 255.0
  np.testing.assert_allclose(mean, flat.mean(0), rtol=1e-6)
  np.testing.assert_allclose(std, flat.std(0), rtol=1e-5)
