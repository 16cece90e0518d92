"""Classic filters against scipy.ndimage (correlate/convolve, sobel, laplace, gaussian) and closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage as ndi
from jax.test_util import check_grads

from jaxconv import ops

SCIPY_MODE = {"zeros": "constant", "reflect": "mirror", "replicate": "nearest", "circular": "wrap"}


def _scipy_per_channel(fn, image, k2d, mode, **kw):
  return np.stack([fn(image[..., c], k2d[..., c], mode=SCIPY_MODE[mode], cval=0.0, **kw) for c in range(image.shape[-1])], -1)


@pytest.mark.parametrize("border", list(SCIPY_MODE))
@pytest.mark.parametrize("ksize,flip", [((3, 3), False), ((2, 4), True), ((5, 1), False), ((4, 3), True)])
def test_filter2d_matches_scipy(rng, border, ksize, flip):
  image = rng.normal(size=(7, 8, 3)).astype(np.float32)
  kernel = rng.normal(size=(*ksize, 1, 3)).astype(np.float32)
  got = ops.filter2d(image, kernel, border, flip=flip)
  want = _scipy_per_channel(ndi.convolve if flip else ndi.correlate, image.astype(np.float64), kernel[:, :, 0, :].astype(np.float64), border)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_filter2d_batched_shared_kernel(rng):
  image = rng.normal(size=(2, 6, 5, 2)).astype(np.float32)
  k = rng.normal(size=(3, 3)).astype(np.float32)
  got = ops.filter2d(image, k, "replicate")
  for n in range(2):
    for c in range(2):
      np.testing.assert_allclose(got[n, :, :, c], ndi.correlate(image[n, :, :, c].astype(np.float64), k, mode="nearest"), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("border", list(SCIPY_MODE))
def test_named_filters_match_scipy(rng, border):
  image = rng.normal(size=(9, 10, 2)).astype(np.float64)
  x = image.astype(np.float32)
  mode = SCIPY_MODE[border]
  per = lambda f, **kw: np.stack([f(image[..., c], mode=mode, cval=0.0, **kw) for c in range(2)], -1)  # noqa: E731
  np.testing.assert_allclose(ops.filter2d(x, ops.sobel_kernel("x"), border), per(ndi.sobel, axis=1), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(ops.filter2d(x, ops.sobel_kernel("y"), border), per(ndi.sobel, axis=0), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(ops.filter2d(x, ops.laplacian_kernel(), border), per(ndi.laplace), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(ops.filter2d(x, ops.box_kernel((3, 5)), border), per(ndi.uniform_filter, size=(3, 5)), rtol=1e-4, atol=1e-5)
  # Gaussian: our radius 3 sigma; SciPy's radius is int(truncate * sigma + 0.5): equal for truncate 3.
  for sigma in (1.0, (1.5, 0.6)):  # sizes where ceil(3 s) == int(3 s + 0.5)
    sy, sx = sigma if isinstance(sigma, tuple) else (sigma, sigma)
    assert ops.gaussian_kernel(sigma).shape[:2] == (2 * int(3 * sy + 0.5) + 1, 2 * int(3 * sx + 0.5) + 1)
    np.testing.assert_allclose(
        ops.filter2d(x, ops.gaussian_kernel(sigma), border), per(ndi.gaussian_filter, sigma=(sy, sx), truncate=3.0), rtol=1e-4, atol=1e-5
    )


def test_kernel_closed_forms():
  ramp = np.tile(np.arange(8.0, dtype=np.float32), (6, 1))[:, :, None] * 0.5  # f = 0.5 x
  inner = (slice(1, -1), slice(1, -1))
  for name, k, gain in (("sobel", ops.sobel_kernel, 8.0), ("scharr", ops.scharr_kernel, 32.0)):
    np.testing.assert_allclose(ops.filter2d(ramp, k("x"))[inner], 0.5 * gain, rtol=1e-6, err_msg=name)
    np.testing.assert_allclose(ops.filter2d(ramp, k("y"))[inner], 0.0, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(ops.filter2d(np.transpose(ramp, (1, 0, 2)), k("y"))[inner], 0.5 * gain, rtol=1e-6)
  np.testing.assert_allclose(ops.filter2d(ramp, ops.laplacian_kernel(True))[inner], 0.0, atol=1e-6)
  const = np.full((5, 6, 3), 2.0, np.float32)
  for border in SCIPY_MODE:
    if border != "zeros":
      np.testing.assert_allclose(ops.filter2d(const, ops.gaussian_kernel(1.0, channels=3), border), 2.0, rtol=1e-6)
      np.testing.assert_allclose(ops.filter2d(const, ops.box_kernel(3, channels=3), border), 2.0, rtol=1e-6)
  assert ops.gaussian_size(1.0) == 7 and ops.gaussian_kernel(1.0, size=(3, 5)).shape == (3, 5, 1, 1)
  np.testing.assert_allclose(float(ops.gaussian_kernel(2.0).sum()), 1.0, rtol=1e-6)
  assert ops.sobel_kernel("x", channels=4).shape == (3, 3, 1, 4)


def test_gabor_against_formula():
  size, sigma, theta, lambd, gamma, psi = (7, 9), 2.0, 0.6, 5.0, 0.5, 0.3
  k = np.asarray(ops.gabor_kernel(size, sigma, theta, lambd, gamma, psi)[:, :, 0, 0])
  assert k.shape == size
  for i, j in [(0, 0), (3, 4), (6, 8), (2, 7), (5, 1)]:
    y, x = i - 3, j - 4
    xr = x * np.cos(theta) + y * np.sin(theta)
    yr = -x * np.sin(theta) + y * np.cos(theta)
    want = np.exp(-(xr**2 + gamma**2 * yr**2) / (2 * sigma**2)) * np.cos(2 * np.pi * xr / lambd + psi)
    np.testing.assert_allclose(k[i, j], want, rtol=1e-5, atol=1e-7)
  # theta = 0, psi = 0: the centre row is a cosine of period lambd under a Gaussian.
  k0 = np.asarray(ops.gabor_kernel(11, 100.0, 0.0, 4.0)[5, :, 0, 0])
  np.testing.assert_allclose(k0[[1, 5, 9]], np.exp(-16 / 20000.0) ** np.array([1, 0, 1]), rtol=1e-5)
  np.testing.assert_allclose(k0[[3, 7]], -np.exp(-4 / 20000.0), rtol=1e-5)


def test_filter2d_jit_grad_dtype(rng):
  image = rng.normal(size=(1, 5, 6, 2)).astype(np.float32)
  k = rng.normal(size=(3, 3, 1, 2)).astype(np.float32)
  for border in ("reflect", "replicate"):  # zeros, circular: tests/test_conv.py checks their gradients
    check_grads(jax.jit(lambda a, b: ops.filter2d(a, b, border)), (image, k), order=1, modes=("rev",), atol=1e-2, rtol=1e-2)
  f = jax.jit(lambda a: ops.filter2d(a, ops.gaussian_kernel(1.0), "reflect"))
  np.testing.assert_allclose(f(image), ops.filter2d(image, ops.gaussian_kernel(1.0)), rtol=1e-5, atol=1e-6)
  assert ops.filter2d(jnp.asarray(image, jnp.bfloat16), k).dtype == jnp.bfloat16


def test_filter_errors():
  img = jnp.ones((4, 4, 2))
  with pytest.raises(ValueError, match=r"border must be one of .*got 'mirror'"):
    ops.filter2d(img, ops.box_kernel(3), "mirror")
  with pytest.raises(ValueError, match=r"kernel must have shape .* C = 2 .*got shape \(3, 3, 1, 3\)"):
    ops.filter2d(img, ops.box_kernel(3, channels=3))
  with pytest.raises(ValueError, match=r"image must have shape \[N, H, W, C\] or \[H, W, C\]; got shape \(4, 4\)"):
    ops.filter2d(jnp.ones((4, 4)), ops.box_kernel(3))
  with pytest.raises(ValueError, match=r"border='reflect' needs the kernel's half-size below the image size: kernel 9x9"):
    ops.filter2d(img, ops.box_kernel(9))
  with pytest.raises(ValueError, match=r"axis must be 'x' .* or 'y'.*got 'z'"):
    ops.sobel_kernel("z")
  with pytest.raises(ValueError, match=r"sigma must be a positive number or a \(y, x\) pair of them; got 0"):
    ops.gaussian_kernel(0)
  with pytest.raises(ValueError, match=r"size must be a positive int or a \(height, width\) pair of them; got \(3, 0\)"):
    ops.box_kernel((3, 0))
  with pytest.raises(ValueError, match=r"lambd must be a positive number; got 0"):
    ops.gabor_kernel(5, 1.0, 0.0, 0)
  with pytest.raises(ValueError, match=r"channels must be a positive int; got 0"):
    ops.laplacian_kernel(channels=0)
