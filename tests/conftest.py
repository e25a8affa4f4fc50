"""Shared fixtures: the real image sets beside the repository, devices, small generated files."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("ALICE_GPU_SHARED_DATA", REPO.parent / "shared" / "data"))
# CI sets this: there the image sets are always present, so their absence is a failure
REQUIRE_SHARED = os.environ.get("ALICE_GPU_REQUIRE_SHARED_DATA") == "1"

needs_cuda = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
DEVICES = ["cpu", pytest.param("cuda", marks=needs_cuda)]


def cuda_test(fn):
    """A test that needs a CUDA GPU: selected by ``-m cuda``, skipped (saying so) without one."""
    for mark in needs_cuda:
        fn = mark(fn)
    return fn


def shared(*parts: str) -> Path:
    """A path under ../shared/data; skips (saying why) when the folder is absent,
    and fails instead where the sets are required (CI)."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        message = f"needs the shared image sets at {path}"
        if REQUIRE_SHARED:
            pytest.fail(f"{message} (ALICE_GPU_REQUIRE_SHARED_DATA=1)")
        pytest.skip(f"{message} (absent outside this project's machines)")
    return path


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    return torch.device(request.param)


@pytest.fixture(scope="session")
def photos() -> Path:
    return shared("photo_collection")


@pytest.fixture(scope="session")
def near_dups() -> Path:
    return shared("near_duplicates")


@pytest.fixture(scope="session")
def odd_files() -> Path:
    return shared("odd_files")


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory) -> Iterator[Path]:
    """One model cache for the whole session, never the user's (the ONNX export is made
    once in it); set before any fixture of any scope runs."""
    folder = tmp_path_factory.mktemp("model-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ALICE_GPU_CACHE", str(folder))
        yield folder


@pytest.fixture(autouse=True)
def _isolated_db(tmp_path_factory, monkeypatch):
    """No test ever touches the user's real index."""
    monkeypatch.setenv("ALICE_GPU_DB", str(tmp_path_factory.mktemp("default-db")))


@pytest.fixture(scope="session")
def photo_set(photos):
    """photo_collection decoded once: (label rows, paths, (N, 256, 256, 3) uint8)."""
    import csv

    import numpy as np

    from alice_gpu.decode import DecodePlan, decode_files
    from alice_gpu.records import FileEntry

    rows = list(csv.DictReader(open(photos / "labels.csv")))
    paths = [str(photos / r["file"]) for r in rows]
    decoded = decode_files([FileEntry(p, 0, 0) for p in paths], DecodePlan(256))
    assert all(d.status == "ok" for d in decoded)
    return rows, paths, np.stack([d.pixels for d in decoded])


def run_cli(*args) -> tuple[int, str, str]:
    """The CLI in this process: (exit code, stdout, stderr)."""
    import contextlib
    import io

    from alice_gpu.cli import run

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = run([str(a) for a in args])
        except SystemExit as exc:       # never expected: run() returns every exit code
            code = exc.code if isinstance(exc.code, int) else 2
    return code, out.getvalue(), err.getvalue()


def chromium_driver(width: int = 1280, height: int = 2000):
    """Headless Chromium through Selenium and Debian's chromedriver; skips when absent
    (CI installs both and sets ALICE_GPU_REQUIRE_BROWSER, so there it fails instead)."""
    import shutil

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        if os.environ.get("ALICE_GPU_REQUIRE_BROWSER"):
            pytest.fail("chromium and chromedriver are required (apt-get install chromium "
                        "chromium-driver)")
        pytest.skip("needs chromium and chromedriver")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    # the machine's network is closed: no background connections to be refused
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run",
                "--disable-quic"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=driver), options=opts)
