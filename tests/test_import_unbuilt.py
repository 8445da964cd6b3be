"""A source tree whose Cython core is not built says so, and how to build it (it used to
fail as a "circular import")."""

import shutil
import subprocess
import sys
from pathlib import Path

import allones

PACKAGE = Path(allones.__file__).resolve().parent


def test_an_unbuilt_core_says_how_to_build_it(tmp_path):
    shutil.copytree(PACKAGE, tmp_path / "allones", ignore=shutil.ignore_patterns("*.so", "*.pyd", "*.c",
                                                                                  "__pycache__"))
    # -S: no site-packages, so not the installed allones but the copy in the working directory
    proc = subprocess.run([sys.executable, "-S", "-c", "import allones"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: allones: the Cython core (allones._core) is not built in "), last
    assert "pip install -e ." in last and "circular" not in proc.stderr
