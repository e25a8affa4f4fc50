"""The stage order is enforced: import-linter's contracts pass here, and catch a backwards import."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LINT = shutil.which("lint-imports") or os.path.join(os.path.dirname(sys.executable), "lint-imports")

pytestmark = pytest.mark.skipif(not os.path.exists(LINT), reason="import-linter is not installed "
                                "(pip install -e '.[dev]')")


def _lint(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([LINT, "--config", str(root / "pyproject.toml")], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


def _copy(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "alice_gpu", tmp_path / "alice_gpu",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_contracts_hold(tmp_path):
    res = _lint(_copy(tmp_path))
    assert res.returncode == 0, res.stdout[-3000:]
    assert "3 kept, 0 broken" in res.stdout
    assert "The run over the engines over pipeline.stages KEPT" in res.stdout


@pytest.mark.parametrize("module, line", [
    ("decode/files.py", "from ..pipeline import run_index  # backwards"),
    ("store/reads.py", "from ..search.vectors import VectorIndex  # backwards"),
    ("features/worker.py", "import torch  # a decode worker must not load torch"),
    ("pipeline/stages.py", "from .local import LocalEngine  # backwards, inside the pipeline"),
])
def test_a_backwards_import_breaks_the_build(tmp_path, module, line):
    root = _copy(tmp_path)
    path = root / "alice_gpu" / module
    path.write_text(path.read_text() + f"\n{line}\n")
    res = _lint(root)
    assert res.returncode != 0 and "BROKEN" in res.stdout, res.stdout[-3000:]
