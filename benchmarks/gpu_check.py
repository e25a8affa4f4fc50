"""One command for a machine with a GPU: CUDA tests, CPU-vs-CUDA agreement, stage timings.

    python benchmarks/gpu_check.py [--files 10000] [--write]     # on a CUDA machine
    python benchmarks/gpu_check.py --cpu-only [--files 1000]      # anywhere: all but the device

1. runs the CUDA tests (``pytest -m cuda``; they skip without a GPU);
2. compares CPU and device outputs on the image sets under ``--data`` (default
   ``$ALICE_GPU_SHARED_DATA`` or ``../shared/data``): identical hash bits for
   >= 99.5% of images and embedding cosine >= 0.999 (device fp16/bf16 vs CPU fp32).
   With --cpu-only the "device" side is the pipeline's own CPU path (hashes in
   numpy workers, fused CNN), checked against the torch reference;
3. times each stage (decode CPU vs GPU, transfer, hashes, embeddings, write) and
   the whole ``alice-gpu index`` on the real photos replicated to --files files;
4. appends the table to benchmarks/RESULTS.md (--write) with the GPU model,
   driver and versions, and writes every figure to --json-out. Exit code 1 when
   an agreement bar is missed.

alice-gpu must be importable (installed, or a source tree on PYTHONPATH with its
package data); the GPU check kit (benchmarks/gpu_kit.py) arranges that.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))        # bench_throughput's helpers (not the package itself)


def data_root(arg: str | None) -> Path:
    return Path(arg or os.environ.get("ALICE_GPU_SHARED_DATA") or REPO.parent / "shared" / "data")


def run_cuda_tests(junit: Path | None) -> str:
    cmd = [sys.executable, "-P", "-m", "pytest", "-q", "-rs", "-m", "cuda", str(REPO / "tests")]
    if junit is not None:
        cmd += ["--junitxml", str(junit)]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    lines = [ln for ln in res.stdout.strip().splitlines() if ln.strip()]
    summary = lines[-1] if lines else res.stderr.strip()[-200:]
    if res.returncode not in (0, 5):
        raise SystemExit(f"CUDA tests failed:\n{res.stdout[-6000:]}\n{res.stderr[-2000:]}")
    return summary


def tests_summary(log: Path) -> str:
    """The last summary line of a pytest log ("12 passed, 3 skipped in 40.1s")."""
    lines = [ln.strip("= \n") for ln in log.read_text().splitlines()
             if " in " in ln and any(w in ln for w in ("passed", "failed", "skipped", "error"))]
    return lines[-1] if lines else "no summary in " + log.name


def real_images(data: Path) -> list[str]:
    from alice_gpu.discover import walk

    roots = [data / n for n in ("photo_collection", "near_duplicates", "ai_generated")
             if (data / n).exists()]
    if not roots:
        raise SystemExit(f"no image sets at {data}")
    return [e.path for e in walk(roots)]


def agreement(device, cpu_only: bool, data: Path) -> dict:
    import torch

    from alice_gpu.decode import DecodePlan, decode_files
    from alice_gpu.features import hashes_np
    from alice_gpu.features.hashes_torch import compute_hashes, to_uint64
    from alice_gpu.features.models import create_model
    from alice_gpu.gpu.devices import resolve_precision
    from alice_gpu.records import FileEntry

    decoded = [d for d in decode_files([FileEntry(p, 0, 0) for p in real_images(data)],
                                       DecodePlan(256)) if d.status == "ok"]
    pix = np.stack([d.pixels for d in decoded])
    batch = torch.from_numpy(pix).permute(0, 3, 1, 2).contiguous()
    ref_h = {k: to_uint64(v) for k, v in compute_hashes(batch).items()}
    if cpu_only:
        got_h = hashes_np.hashes(pix)
        side = "numpy workers vs torch CPU"
    else:
        got_h = {k: to_uint64(v) for k, v in compute_hashes(batch.to(device)).items()}
        side = f"torch {device} vs torch CPU"
    same = np.mean([all(got_h[k][i] == ref_h[k][i] for k in ref_h) for i in range(len(pix))])
    prec = "fp32" if cpu_only else resolve_precision(device, "auto")
    ref_m = create_model("efficientnet_lite0", "cpu", optimize=False)
    got_m = create_model("efficientnet_lite0", device, precision=prec)
    cos = []
    with torch.inference_mode():
        for i in range(0, len(batch), 32):
            a = ref_m.embed(batch[i:i + 32])
            b = got_m.embed(batch[i:i + 32].to(device)).float().cpu()
            cos.append(torch.nn.functional.cosine_similarity(a, b))
    cos = torch.cat(cos)
    return {"images": len(pix), "hash_side": side, "identical_hash_share": float(same),
            "embedding_precision": prec, "embedding_min_cosine": float(cos.min()),
            "embedding_mean_cosine": float(cos.mean())}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-P", "-m", "alice_gpu", *args]


def stage_timings(device, n_files: int, tmp: Path, cpu_only: bool, data: Path) -> dict:
    """Each stage alone on replicated real photos, then whole ``index`` runs."""
    from bench_throughput import make_set

    from alice_gpu.discover import walk

    folder = make_set(data / "photo_collection" / "images", n_files, tmp / "set")
    entries = list(walk([folder]))
    out: dict = {"files": len(entries)}
    pixels = _decode_stage(entries, device, cpu_only, out)
    _device_stages(pixels, device, out)
    _write_stage(len(pixels), tmp, out)
    args = _cli("index", str(folder), "--device", device.type, "--db", str(tmp / "e2e"), "--json")
    t = time.perf_counter()
    res = subprocess.run(args, capture_output=True, text=True)
    out["end_to_end"] = len(entries) / (time.perf_counter() - t)
    if res.returncode != 0:
        raise SystemExit(f"alice-gpu index failed: {res.stderr[-3000:]}")
    out["end_to_end_stages"] = json.loads(res.stdout)["metrics"]["stage_seconds"]
    if not cpu_only:
        t = time.perf_counter()
        res = subprocess.run(args[:-3] + ["--db", str(tmp / "e2e-gpu"), "--decode", "gpu",
                                          "--json"], capture_output=True, text=True)
        out["end_to_end_gpu_decode"] = len(entries) / (time.perf_counter() - t)
    return out


def _decode_stage(entries, device, cpu_only: bool, out: dict) -> list[np.ndarray]:
    from alice_gpu.decode import DecodePlan
    from alice_gpu.gpu.devices import synchronize
    from alice_gpu.pipeline.dispatch import decode_stream
    from alice_gpu.pipeline.pool import DecodePool, effective_workers

    plan = DecodePlan(256)
    pool = DecodePool(effective_workers(os.cpu_count() or 1), 60.0)
    t = time.perf_counter()
    decoded = list(decode_stream(entries, plan, pool, 512, 0))
    out["decode_cpu"] = len(entries) / (time.perf_counter() - t)
    pool.close()
    if not cpu_only:
        from alice_gpu.gpu.nvjpeg import gpu_decode_jpegs

        datas = [open(e.path, "rb").read() for e in entries]
        t = time.perf_counter()
        for i in range(0, len(datas), 256):
            gpu_decode_jpegs(datas[i:i + 256], [1] * len(datas[i:i + 256]), 256, device)
        synchronize(device)
        out["decode_gpu"] = len(datas) / (time.perf_counter() - t)
    return [d.pixels for d in decoded if d.status == "ok"]


def _device_stages(pixels: list[np.ndarray], device, out: dict) -> None:
    import torch

    from alice_gpu.features.hashes_torch import compute_hashes
    from alice_gpu.features.models import create_model
    from alice_gpu.gpu.devices import model_batch_size, resolve_precision, synchronize
    from alice_gpu.gpu.staging import Stager

    stager = Stager(device)
    bs = 256 if device.type == "cuda" else 100
    t = time.perf_counter()
    batches = [stager.stage(pixels[i:i + bs]) for i in range(0, len(pixels), bs)]
    synchronize(device)
    out["transfer"] = len(pixels) / (time.perf_counter() - t)
    with torch.inference_mode():
        t = time.perf_counter()
        for b in batches:
            compute_hashes(b.contiguous())
        synchronize(device)
        out["hashes"] = len(pixels) / (time.perf_counter() - t)
        model = create_model("efficientnet_lite0", device,
                             precision=resolve_precision(device, "auto"))
        micro = min(bs, model_batch_size(device))
        sub = batches if device.type == "cuda" else batches[: max(1, 1000 // bs)]
        t = time.perf_counter()
        done = 0
        for b in sub:
            for i in range(0, len(b), micro):
                model.embed(b[i:i + micro])
            done += len(b)
        synchronize(device)
        out["embeddings"] = done / (time.perf_counter() - t)


def _write_stage(n: int, tmp: Path, out: dict) -> None:
    from alice_gpu.records import ORIENT_KEYS, AssetRecord
    from alice_gpu.store import Store

    recs = [AssetRecord(path=f"/bench/{i}.jpg", size=i, mtime_ns=i, status="ok", width=1,
                        height=1, format="JPEG", hashes={"ahash": i, "dhash": i, "phash": i,
                                                         "whash": i, **{k: i for k in ORIENT_KEYS}},
                        embedding=np.ones(1280, np.float32), id=i + 1) for i in range(n)]
    with Store(tmp / "db", model="efficientnet_lite0", dim=1280) as store:
        t = time.perf_counter()
        for i in range(0, len(recs), 2000):
            store.write_batch(recs[i:i + 2000])
        out["write"] = len(recs) / (time.perf_counter() - t)


def environment(device, cpu_only: bool) -> str:
    import torch

    parts = [f"Python {platform.python_version()}", f"torch {torch.__version__}"]
    if cpu_only:
        return f"CPU only ({os.cpu_count()} cores, no GPU used); " + ", ".join(parts)
    name = torch.cuda.get_device_name(device)
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True).stdout.strip().splitlines()[0]
    except (OSError, IndexError):
        driver = "unknown"
    try:
        import cupy

        parts.append(f"CuPy {cupy.__version__}")
    except ImportError:
        parts.append("CuPy not installed")
    return (f"{name}, driver {driver}, CUDA {torch.version.cuda}, {os.cpu_count()} CPU cores; "
            + ", ".join(parts))


def report(args, device, tests: str, agree: dict, stages: dict) -> tuple[str, bool]:
    ok = agree["identical_hash_share"] >= 0.995 and agree["embedding_min_cosine"] >= 0.999
    rows = [("CUDA tests (pytest -m cuda)", tests),
            (f"hash bits identical ({agree['hash_side']}, {agree['images']} images)",
             f"{agree['identical_hash_share']:.2%} (bar 99.5%)"),
            (f"embedding cosine, {agree['embedding_precision']} vs CPU fp32 eager",
             f"min {agree['embedding_min_cosine']:.5f}, mean {agree['embedding_mean_cosine']:.5f} "
             f"(bar 0.999)")]
    for key in ("decode_cpu", "decode_gpu", "transfer", "hashes", "embeddings", "write",
                "end_to_end", "end_to_end_gpu_decode"):
        if key in stages:
            rows.append((f"{key.replace('_', ' ')} ({stages['files']:,} files)",
                         f"{stages[key]:,.0f} images/s"))
    rows.append(("end-to-end stage seconds", ", ".join(
        f"{k} {v:.1f}" for k, v in stages["end_to_end_stages"].items())))
    text = "\n".join([f"## GPU check ({'--cpu-only' if args.cpu_only else 'CUDA'}), "
                      f"{dt.date.today()}", "", environment(device, args.cpu_only), "",
                      "| check | result |", "|---|---|", *[f"| {a} | {b} |" for a, b in rows], "",
                      f"Verdict: {'all bars met' if ok else 'AGREEMENT BAR MISSED'}.", ""])
    return text, ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-only", action="store_true", help="exercise everything but the device")
    ap.add_argument("--files", type=int, default=None,
                    help="replicated set size (default 10000; 1000 with --cpu-only)")
    ap.add_argument("--data", help="image sets (default $ALICE_GPU_SHARED_DATA or ../shared/data)")
    ap.add_argument("--write", action="store_true", help="append the table to RESULTS.md")
    ap.add_argument("--json-out", type=Path, help="write every figure to this JSON file")
    ap.add_argument("--junit", type=Path, help="JUnit XML of the CUDA tests")
    ap.add_argument("--tests-from", type=Path,
                    help="take the CUDA tests' summary from this pytest log instead of running "
                         "them (the GPU check kit has just run them)")
    args = ap.parse_args()
    import torch

    if not args.cpu_only and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here: run with --cpu-only, or on a GPU machine")
    device = torch.device("cpu" if args.cpu_only else "cuda")
    data = data_root(args.data)
    n = args.files or (1000 if args.cpu_only else 10000)
    tests = tests_summary(args.tests_from) if args.tests_from else run_cuda_tests(args.junit)
    agree = agreement(device, args.cpu_only, data)
    with tempfile.TemporaryDirectory() as tmp:
        stages = stage_timings(device, n, Path(tmp), args.cpu_only, data)
    text, ok = report(args, device, tests, agree, stages)
    print(text)
    if args.json_out:
        args.json_out.write_text(json.dumps({"tests": tests, "agreement": agree,
                                             "stages": stages, "ok": ok}, indent=2) + "\n")
    if args.write:
        with open(REPO / "benchmarks" / "RESULTS.md", "a") as fh:
            fh.write("\n" + text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
