"""Installing as the README says must leave a clone clean, or every result of a fresh clone
is stamped '+dirty' (the install writes bayesbench.egg-info/ into the source tree)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                          check=True).stdout


@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(),
                    reason="needs a git checkout")
def test_an_editable_install_leaves_a_clone_clean(tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(REPO), str(clone)], check=True)
    assert not [f for f in git("ls-files", cwd=clone).splitlines() if ".egg-info/" in f]
    # the metadata step of `pip install -e .` (setuptools' egg_info), without installing
    subprocess.run([sys.executable, "-c", "from setuptools import setup; setup()", "-q",
                    "egg_info"], cwd=clone, check=True, capture_output=True)
    assert (clone / "bayesbench.egg-info" / "PKG-INFO").is_file()
    assert git("status", "--porcelain", cwd=clone) == ""
