"""Downloading dataset files into a cache, with checksums and no half-written files.

The standard library does the HTTP (no extra dependency); what it lacks, and what this module
adds, is the discipline around it: stream into a temporary file in the cache folder, verify the
MD5/SHA-256, and only then ``os.replace`` it into place, so an interrupted or corrupt download
never leaves a file that a later run would trust.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Optional


class ChecksumError(ValueError):
  """A file's digest differs from the one registered for it."""


def default_cache_dir() -> Path:
  """The download cache: ``$JAXCONV_DATA`` or ``~/.cache/jaxconv/data``.

  Example:
    >>> isinstance(default_cache_dir(), Path)
    True
  """
  env = os.environ.get("JAXCONV_DATA")
  return Path(env) if env else Path.home() / ".cache" / "jaxconv" / "data"


def file_digest(path: str | os.PathLike, algorithm: str = "md5") -> str:
  """Hex digest of a file, read in chunks.

  Example:
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "f"; _ = p.write_bytes(b"abc")
    >>> file_digest(p)
    '900150983cd24fb0d6963f7d28e17f72'
  """
  if algorithm not in ("md5", "sha256"):
    raise ValueError(f"algorithm={algorithm!r} is not supported; use 'md5' or 'sha256'.")
  h = hashlib.new(algorithm)
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def check_file(path: str | os.PathLike, md5: Optional[str] = None, sha256: Optional[str] = None) -> None:
  """Raises ``ChecksumError`` naming the file if its MD5 or SHA-256 is not the expected one."""
  for algorithm, want in (("md5", md5), ("sha256", sha256)):
    if want is not None:
      got = file_digest(path, algorithm)
      if got != want.lower():
        raise ChecksumError(
            f"{path}: {algorithm} checksum mismatch (expected {want}, got {got}); the file is "
            "corrupt or truncated. Delete it and download again.")


def download(urls: str | Sequence[str], dest: str | os.PathLike, *, md5: Optional[str] = None,
             sha256: Optional[str] = None, timeout: float = 60.0) -> Path:
  """Downloads ``dest`` from the first mirror that works, verifying its checksum.

  An existing ``dest`` whose checksum matches is reused. The bytes go to a temporary file next to
  ``dest`` that is renamed into place only after the checksum passed; on any failure (network
  error, interruption, checksum mismatch) the temporary file is removed.

  Args:
    urls: one URL or mirrors tried in order.
    dest: the final path in the cache.
    md5, sha256: expected hex digests (at least one should be given for real datasets).
    timeout: socket timeout in seconds.

  Returns:
    ``dest`` as a Path.

  Raises:
    ChecksumError: the downloaded bytes do not match (the last mirror's error is raised).
    OSError: no mirror could be reached; the message lists the URLs tried.
  """
  urls = [urls] if isinstance(urls, str) else list(urls)
  if not urls:
    raise ValueError("urls is empty; give at least one URL to download from.")
  dest = Path(dest)
  if dest.exists():
    try:
      check_file(dest, md5, sha256)
      return dest
    except ChecksumError:
      dest.unlink()  # a corrupt cached copy: fetch it again
  dest.parent.mkdir(parents=True, exist_ok=True)
  errors = []
  for url in urls:
    fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    try:
      with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
        expected = resp.headers.get("Content-Length")
        n = _copy(resp, out)
      if expected is not None and n != int(expected):
        raise OSError(f"{url}: connection closed after {n} of {expected} bytes")
      check_file(tmp, md5, sha256)
      os.replace(tmp, dest)
      return dest
    except ChecksumError as e:
      errors.append(e)
    except (OSError, http.client.HTTPException) as e:  # URLError is an OSError
      errors.append(OSError(f"{url}: {e}"))
    finally:
      if os.path.exists(tmp):
        os.unlink(tmp)
  last = errors[-1]
  if isinstance(last, ChecksumError):
    raise ChecksumError(f"downloading {dest.name}: {last}") from last
  raise OSError(f"could not download {dest.name} from any of {urls}: "
                + "; ".join(str(e) for e in errors)) from last


def _copy(src, dst) -> int:
  n = 0
  for chunk in iter(lambda: src.read(1 << 16), b""):
    dst.write(chunk)
    n += len(chunk)
  return n


__all__ = ["ChecksumError", "default_cache_dir", "file_digest", "check_file", "download"]
