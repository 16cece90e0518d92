"""Every Python block of the README runs as written, each in a fresh interpreter."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def test_readme_has_blocks():
  assert len(BLOCKS) >= 8


@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_block_runs(index, tmp_path):
  # In its own folder (blocks write files such as runs/ or weights) with the suite's CPU setup.
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": ""}
  # One device, and the suite's XLA pipeline (tests/conftest.py): what a block computes is the same
  # on XLA's default one, only compiled more slowly.
  env["XLA_FLAGS"] = os.environ.get("JAXCONV_TEST_XLA_FLAGS", "")
  if not env["XLA_FLAGS"]:  # XLA reads a value that does not start with "--" as a file name
    del env["XLA_FLAGS"]
  out = subprocess.run([sys.executable, "-c", BLOCKS[index]], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=600)
  assert out.returncode == 0, f"README block {index} failed:\n{BLOCKS[index]}\n{out.stderr[-3000:]}"
