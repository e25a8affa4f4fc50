"""One command for a machine with a GPU: CUDA tests, CPU-vs-CUDA agreement, stage timings.

    python benchmarks/gpu_check.py [--files 10000] [--write]     # on a CUDA machine
    python benchmarks/gpu_check.py --cpu-only [--files 1000]      # anywhere: all but the device

1. runs the CUDA tests (pytest -k cuda; they skip without a GPU);
2. compares CPU and device outputs on ../shared/data: identical hash bits for
   >= 99.5% of images and embedding cosine >= 0.999 (device fp16/bf16 vs CPU fp32).
   With --cpu-only the "device" side is the pipeline's own CPU path (hashes in
   numpy workers, fused CNN), checked against the torch reference;
3. times each stage (decode CPU vs GPU, transfer, hashes, embeddings, write) and
   the whole `alice-gpu index` on the real photos replicated to --files files;
4. appends the table to benchmarks/RESULTS.md (--write) with the GPU model,
   driver and versions. Exit code 1 when an agreement bar is missed.
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

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

DATA = REPO.parent / "shared" / "data"


def run_cuda_tests() -> str:
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-k", "cuda or kernel or device",
                          str(REPO / "tests")], capture_output=True, text=True, cwd=REPO)
    lines = [ln for ln in res.stdout.strip().splitlines() if ln.strip()]
    summary = lines[-1] if lines else res.stderr.strip()[-200:]
    if res.returncode not in (0, 5):
        raise SystemExit(f"CUDA tests failed:\n{res.stdout[-4000:]}")
    return summary


def real_images() -> list[str]:
    from alice_gpu.discovery import walk

    roots = [DATA / n for n in ("photo_collection", "near_duplicates", "ai_generated") if (DATA / n).exists()]
    if not roots:
        raise SystemExit(f"no image sets at {DATA}")
    return [e.path for e in walk(roots)]


def agreement(device, cpu_only: bool) -> dict:
    import torch

    from alice_gpu import hashing_cpu
    from alice_gpu.decoding import decode_many
    from alice_gpu.device import resolve_precision
    from alice_gpu.discovery import FileEntry
    from alice_gpu.embedding import create_model
    from alice_gpu.hashing import compute_hashes, to_uint64

    decoded = [d for d in decode_many([FileEntry(p, 0, 0) for p in real_images()], 256)
               if d.status == "ok"]
    pix = np.stack([d.pixels for d in decoded])
    batch = torch.from_numpy(pix).permute(0, 3, 1, 2).contiguous()
    ref_h = {k: to_uint64(v) for k, v in compute_hashes(batch).items()}
    if cpu_only:
        got_h = hashing_cpu.hashes(pix)
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


def stage_timings(device, n_files: int, tmp: Path, cpu_only: bool) -> dict:
    import torch

    from alice_gpu.decoding import decode_many
    from alice_gpu.device import Stager, gpu_decode_jpegs, resolve_precision, synchronize
    from alice_gpu.discovery import walk
    from alice_gpu.embedding import create_model
    from alice_gpu.hashing import compute_hashes
    from alice_gpu.pipeline import effective_workers, start_pool
    from alice_gpu.store import AssetRecord, Store
    from bench_throughput import PHOTOS, make_set

    folder = make_set(PHOTOS, n_files, tmp / "set")
    entries = list(walk([folder]))
    out: dict = {"files": len(entries)}
    workers = effective_workers(os.cpu_count() or 1)
    pool = start_pool(workers)
    t = time.perf_counter()
    chunks = [entries[i:i + 32] for i in range(0, len(entries), 32)]
    decoded = []
    for part in (pool.executor.map(decode_many, chunks, [256] * len(chunks)) if pool else map(
            decode_many, chunks, [256] * len(chunks))):
        decoded += part
    out["decode_cpu"] = len(entries) / (time.perf_counter() - t)
    if pool:
        pool.shutdown()
    pixels = [d.pixels for d in decoded if d.status == "ok"]
    if not cpu_only:
        datas = [open(e.path, "rb").read() for e in entries]
        t = time.perf_counter()
        for i in range(0, len(datas), 256):
            gpu_decode_jpegs(datas[i:i + 256], [1] * len(datas[i:i + 256]), 256, device)
        synchronize(device)
        out["decode_gpu"] = len(datas) / (time.perf_counter() - t)
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
        micro = 8 if device.type == "cpu" else bs
        sub = batches if device.type == "cuda" else batches[: max(1, 1000 // bs)]
        t = time.perf_counter()
        done = 0
        for b in sub:
            for i in range(0, len(b), micro):
                model.embed(b[i:i + micro])
            done += len(b)
        synchronize(device)
        out["embeddings"] = done / (time.perf_counter() - t)
    del batches
    recs = [AssetRecord(path=f"/bench/{i}.jpg", size=i, mtime_ns=i, status="ok", width=1,
                        height=1, format="JPEG", hashes={"ahash": i, "dhash": i, "phash": i,
                                                         "whash": i},
                        embedding=np.ones(1280, np.float32), id=i + 1) for i in range(len(pixels))]
    with Store(tmp / "db", model="efficientnet_lite0", dim=1280) as store:
        t = time.perf_counter()
        for i in range(0, len(recs), 2000):
            store.write_batch(recs[i:i + 2000])
        out["write"] = len(recs) / (time.perf_counter() - t)
    exe = str(Path(sys.executable).with_name("alice-gpu"))
    args = [exe, "index", str(folder), "--device", device.type, "--db", str(tmp / "e2e"), "--json"]
    t = time.perf_counter()
    res = subprocess.run(args, capture_output=True, text=True)
    out["end_to_end"] = len(entries) / (time.perf_counter() - t)
    out["end_to_end_stages"] = json.loads(res.stdout)["metrics"]["stage_seconds"]
    if not cpu_only:
        t = time.perf_counter()
        res = subprocess.run(args[:-2] + ["--db", str(tmp / "e2e-gpu"), "--decode", "gpu", "--json"],
                             capture_output=True, text=True)
        out["end_to_end_gpu_decode"] = len(entries) / (time.perf_counter() - t)
    return out


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
    return f"{name}, driver {driver}, CUDA {torch.version.cuda}; " + ", ".join(parts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-only", action="store_true", help="exercise everything but the device")
    ap.add_argument("--files", type=int, default=None,
                    help="replicated set size (default 10000; 1000 with --cpu-only)")
    ap.add_argument("--write", action="store_true", help="append the table to RESULTS.md")
    args = ap.parse_args()
    import torch

    if not args.cpu_only and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here: run with --cpu-only, or on a GPU machine")
    device = torch.device("cpu" if args.cpu_only else "cuda")
    n = args.files or (1000 if args.cpu_only else 10000)
    tests = run_cuda_tests()
    agree = agreement(device, args.cpu_only)
    with tempfile.TemporaryDirectory() as tmp:
        stages = stage_timings(device, n, Path(tmp), args.cpu_only)
    ok = agree["identical_hash_share"] >= 0.995 and agree["embedding_min_cosine"] >= 0.999
    rows = [("CUDA tests", tests),
            (f"hash bits identical ({agree['hash_side']}, {agree['images']} images)",
             f"{agree['identical_hash_share']:.2%} (bar 99.5%)"),
            (f"embedding cosine, {agree['embedding_precision']} vs CPU fp32 eager",
             f"min {agree['embedding_min_cosine']:.5f}, mean {agree['embedding_mean_cosine']:.5f} (bar 0.999)")]
    for key in ("decode_cpu", "decode_gpu", "transfer", "hashes", "embeddings", "write",
                "end_to_end", "end_to_end_gpu_decode"):
        if key in stages:
            rows.append((f"{key.replace('_', ' ')} ({stages['files']:,} files)",
                         f"{stages[key]:,.0f} images/s"))
    rows.append(("end-to-end stage seconds", ", ".join(
        f"{k} {v:.1f}" for k, v in stages["end_to_end_stages"].items())))
    text = "\n".join([f"## GPU check ({'--cpu-only' if args.cpu_only else 'CUDA'}), {dt.date.today()}",
                      "", environment(device, args.cpu_only), "", "| check | result |", "|---|---|",
                      *[f"| {a} | {b} |" for a, b in rows], "",
                      f"Verdict: {'all bars met' if ok else 'AGREEMENT BAR MISSED'}.", ""])
    print(text)
    if args.write:
        with open(REPO / "benchmarks" / "RESULTS.md", "a") as fh:
            fh.write("\n" + text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
