"""The GPU check kit: everything the first GPU machine needs, carried in with the working tree.

    python benchmarks/gpu_kit.py pack                  # here: build the ignored .gpu-carry/
    python benchmarks/gpu_kit.py run [--cpu-only]      # there (or a dry run here, Python 3.12)

The GPU machine has Python 3.12, torch (CUDA 13), CuPy and pyarrow, but no duckdb,
FAISS, simplejpeg or our weights, no network, and at most 64 MiB arrives with the
working tree. ``pack`` fills ``.gpu-carry/`` with

* ``wheels/``: Python 3.12 manylinux wheels of our dependencies that a bare
  machine lacks (the versions installed here), and a wheel of alice-gpu itself;
* ``weights/efficientnet_lite0.pth``: the default model's state dict in fp16
  (half the size; cast back on loading, and both sides of every comparison
  there load the same file);
* ``data/``: a few real photos (with their labels) and four UKBench views, in the
  layout of ``../shared/data``; the timings replicate the photos to 10,000 files;

and prints its size together with the tracked working tree's (the limit is 64 MiB).

``run`` installs every carried wheel with ``--no-deps`` into ``.gpu-carry/site``
(a ``--target`` folder: the machine's own packages, torch first, are not touched),
then runs ``pytest -m cuda`` and ``benchmarks/gpu_check.py --write`` against the
installed package, within a time budget (8 minutes), and leaves logs, JUnit XML,
the check's JSON and the updated RESULTS.md under ``--out`` (default ``$OUT``).
``--cpu-only`` is the dry run for a machine without a GPU: the CUDA tests skip,
the check runs ``--cpu-only`` and RESULTS.md is left as it is.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CARRY = REPO / ".gpu-carry"
LIMIT = 64 * 2**20
PYTHON = "3.12"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux_2_12_x86_64")
# what a machine with torch, CuPy and pyarrow may lack: distribution → the version here
CARRIED = ("duckdb", "faiss-cpu", "simplejpeg", "loky", "cloudpickle", "psutil", "cachetools",
           "typer", "shellingham", "annotated-doc", "rich", "markdown-it-py", "mdurl", "pygments",
           "pyyaml", "threadpoolctl", "pytest", "pluggy", "iniconfig", "packaging")
PHOTOS = 40
UKBENCH = 4
RUN_BUDGET_S = 8 * 60


# ------------------------------------------------------------------ pack (here)

def pack(shared: Path, photos: int) -> None:
    if CARRY.exists():
        shutil.rmtree(CARRY)
    (CARRY / "wheels").mkdir(parents=True)
    _wheels(CARRY / "wheels")
    _weights(CARRY / "weights")
    _data(shared, CARRY / "data", photos)
    manifest = {"python": PYTHON, "made": time.strftime("%Y-%m-%d %H:%M:%S"),
                "commit": _git("rev-parse", "--short", "HEAD"),
                "files": {str(p.relative_to(CARRY)): _sha256(p)
                          for p in sorted(CARRY.rglob("*")) if p.is_file()}}
    (CARRY / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    if _sizes() >= LIMIT:
        raise SystemExit("the carry is over the limit: fewer photos (--photos)")


def _sizes() -> int:
    """Print and return what travels: the carry (without the install ``run`` makes in it)
    and the tracked working tree."""
    carry = sum(p.stat().st_size for p in CARRY.rglob("*")
                if p.is_file() and "site" not in p.relative_to(CARRY).parts[:1])
    try:
        tracked = _git("ls-files", "-z").split("\0")
    except (OSError, subprocess.CalledProcessError):    # a copy without .git: every file
        tracked = [str(p.relative_to(REPO)) for p in REPO.rglob("*")
                   if p.is_file() and CARRY not in p.parents]
    tree = sum((REPO / f).stat().st_size for f in tracked if f and (REPO / f).is_file())
    total = carry + tree
    print(f"carry {carry / 2**20:.1f} MiB + tracked working tree {tree / 2**20:.1f} MiB "
          f"= {total / 2**20:.1f} MiB (limit {LIMIT / 2**20:.0f} MiB)", flush=True)
    return total


def _wheels(dest: Path) -> None:
    pins = [f"{name}=={metadata.version(name)}" for name in CARRIED]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
           "--python-version", PYTHON, "--implementation", "cp", "-d", str(dest), *pins]
    for plat in PLATFORMS:
        cmd[4:4] = ["--platform", plat]
    subprocess.run(cmd, check=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dest),
                    str(REPO)], check=True)


def _weights(dest: Path) -> None:
    import torch

    from alice_gpu.features.models import _REGISTRY

    state = torch.load(_REGISTRY["efficientnet_lite0"].weights(), map_location="cpu",
                       weights_only=True)
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    dest.mkdir(parents=True)
    torch.save(half, dest / "efficientnet_lite0.pth")


def _data(shared: Path, dest: Path, photos: int) -> None:
    src = shared / "photo_collection"
    rows = list(csv.DictReader(open(src / "labels.csv")))[:photos]
    (dest / "photo_collection" / "images").mkdir(parents=True)
    for r in rows:
        shutil.copy2(src / r["file"], dest / "photo_collection" / r["file"])
    with open(dest / "photo_collection" / "labels.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    ukb = dest / "near_duplicates" / "ukbench"
    ukb.mkdir(parents=True)
    for n in range(UKBENCH):
        shutil.copy2(shared / "near_duplicates" / "ukbench" / f"ukbench{n:05d}.jpg", ukb)


# ------------------------------------------------------------------ run (there)

def run(out: Path, cpu_only: bool, files: int | None) -> int:
    """Install the carry offline, run the CUDA tests and the GPU check; results under ``out``."""
    t0 = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    if not (CARRY / "manifest.json").exists():
        raise SystemExit(f"no carry at {CARRY}: run `python benchmarks/gpu_kit.py pack` first")
    _sizes()
    if f"{sys.version_info.major}.{sys.version_info.minor}" != PYTHON:
        print(f"warning: the carried wheels are for Python {PYTHON}, this is "
              f"{sys.version.split()[0]}", flush=True)
    site = CARRY / "site"
    if site.exists():
        shutil.rmtree(site)
    wheels = sorted(str(p) for p in (CARRY / "wheels").glob("*.whl"))
    _step(out, "install", [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps",
                           "--target", str(site), *wheels], env=os.environ, budget=120)
    stale = _stale(site)
    if stale:
        raise SystemExit(f"the carried alice-gpu wheel differs from this working tree "
                         f"({', '.join(stale[:3])}...): run `gpu_kit.py pack` again")
    env = _environment(site)
    _step(out, "versions", [sys.executable, "-P", "-c", _VERSIONS], env=env, budget=60)
    left = RUN_BUDGET_S - (time.monotonic() - t0)
    tests = _step(out, "pytest-cuda", [sys.executable, "-P", "-m", "pytest", "-q", "-rs",
                                       "-m", "cuda", "--junitxml", str(out / "pytest-cuda.xml"),
                                       "tests"], env=env, budget=left * 0.45)
    left = RUN_BUDGET_S - (time.monotonic() - t0) - 10
    check = [sys.executable, "-P", "benchmarks/gpu_check.py",
             "--json-out", str(out / "gpu_check.json"),
             "--tests-from", str(out / "pytest-cuda.log")]
    # a dry run leaves RESULTS.md alone: its table is in gpu-check.log and the JSON
    check += ["--cpu-only"] if cpu_only else ["--write"]
    check += ["--files", str(files)] if files else []
    checked = _step(out, "gpu-check", check, env=env, budget=left)
    shutil.copy2(REPO / "benchmarks" / "RESULTS.md", out / "RESULTS.md")
    took = time.monotonic() - t0
    print(f"gpu kit: pytest -m cuda exit {tests}, gpu_check exit {checked}, {took:.0f} s "
          f"(budget {RUN_BUDGET_S} s); results in {out}", flush=True)
    return 0 if tests in (0, 5) and checked == 0 else 1


_VERSIONS = """
import importlib, sys
for name in ("torch", "torchvision", "cupy", "numpy", "PIL", "pyarrow", "duckdb", "faiss",
             "simplejpeg", "scipy", "imagehash", "alice_gpu"):
    try:
        mod = importlib.import_module(name)
        print(f"{name} {getattr(mod, '__version__', '?')} {getattr(mod, '__file__', '')}")
    except Exception as exc:
        print(f"{name} missing ({type(exc).__name__}: {exc})")
"""


def _stale(site: Path) -> list[str]:
    """Files of the installed package that are not the working tree's (a pack made earlier)."""
    installed = {p.relative_to(site): p for p in (site / "alice_gpu").rglob("*")
                 if p.is_file() and p.suffix in (".py", ".yaml", ".cu")}
    mine = {Path("alice_gpu") / p.relative_to(REPO / "alice_gpu"): p
            for p in (REPO / "alice_gpu").rglob("*.py")}
    mine.update({Path("alice_gpu", sub, p.name): p for sub in ("configs", "kernels")
                 for p in (REPO / sub).iterdir() if p.suffix in (".py", ".yaml", ".cu")})
    return sorted(str(k) for k in installed.keys() | mine.keys()
                  if k not in installed or k not in mine
                  or installed[k].read_bytes() != mine[k].read_bytes())


def _environment(site: Path) -> dict[str, str]:
    """The carried packages first, the carried weights and photos, the console script."""
    return {**os.environ,
            "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]).rstrip(
                os.pathsep),
            "PATH": os.pathsep.join([str(site / "bin"), os.environ.get("PATH", "")]),
            "ALICE_GPU_WEIGHTS_DIR": str(CARRY / "weights"),
            "ALICE_GPU_SHARED_DATA": str(CARRY / "data"),
            "PYTHONDONTWRITEBYTECODE": "1"}


def _step(out: Path, name: str, cmd: list[str], env: dict[str, str], budget: float) -> int:
    """Run one step with its output in ``out/<name>.log``; a step past its budget is stopped."""
    print(f"gpu kit: {name} (at most {budget:.0f} s)", flush=True)
    t = time.monotonic()
    with open(out / f"{name}.log", "w") as log:
        try:
            code = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  timeout=max(budget, 1)).returncode
        except subprocess.TimeoutExpired:
            code = 124
            log.write(f"\ngpu kit: {name} stopped after {budget:.0f} s\n")
    print(f"gpu kit: {name} exit {code} in {time.monotonic() - t:.0f} s; tail of its log:",
          flush=True)
    print("".join((out / f"{name}.log").read_text().splitlines(True)[-15:]), flush=True)
    return code


# ------------------------------------------------------------------ helpers

def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                          check=True).stdout.strip()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="build .gpu-carry/ here")
    p.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--photos", type=int, default=PHOTOS)
    r = sub.add_parser("run", help="install the carry offline and run the checks")
    r.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", REPO / "gpu-kit-out")))
    r.add_argument("--cpu-only", action="store_true", help="a dry run on a machine without a GPU")
    r.add_argument("--files", type=int, help="replicated set size for the timings")
    args = ap.parse_args()
    if args.command == "pack":
        pack(args.shared, args.photos)
        return 0
    return run(args.out, args.cpu_only, args.files)


if __name__ == "__main__":
    sys.exit(main())
