"""The embedding stage alone, per CPU runtime and batch size, against the machine's fp32 peak.

    python benchmarks/bench_embed.py [--photos 128] [--passes 2] [--json] [--write]

The same photos (``photo_collection``, decoded by the project's decoder at the working
size) go through each installed runtime: torch eager as the project runs it (BN fused,
channels_last, fp32) and ONNX Runtime fp32 (the cached export). Passes are interleaved
(runtime A, B, A, B...), each the median of its batches after warm-up ones. ONNX
Runtime int8 (``features.precision: int8``) is measured too; its share of the peak is
against the fp32 peak, so it can pass 100%. It prints,
per runtime and batch: images/s, MACs per image (counted with forward hooks on every
convolution and linear layer), the share of the fp32 peak, and the cosine of the
embeddings to torch fp32 (min and median over the photos).

The fp32 peak is an assumption, stated in the output: cores x FMA units per core x
fp32 lanes per FMA (16 with AVX-512, 8 with AVX2) x 2 flops x the clock
(/proc/cpuinfo's ``cpu MHz``, or ``--ghz``); 2 FMA units per core is right for recent
Xeons and EPYCs, and a guess elsewhere.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
PHOTOS = REPO.parent / "shared" / "data" / "photo_collection" / "images"


def tempfile_dir() -> str:
    import tempfile

    return tempfile.gettempdir()


def cpu_peak(ghz: float | None, fma_units: int) -> dict:
    flags, mhz = set(), []
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags") and not flags:
            flags = set(line.split(":", 1)[1].split())
        if line.startswith("cpu MHz"):
            mhz.append(float(line.split(":", 1)[1]))
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    cores = len(os.sched_getaffinity(0))
    clock = ghz or (max(mhz) / 1000 if mhz else 2.0)
    gflops = cores * fma_units * lanes * 2 * clock
    model = next((ln.split(":", 1)[1].strip() for ln in
                  Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name")),
                 platform.processor())
    return {"cpu": model, "cores": cores, "simd": "avx512" if lanes == 16 else
            "avx2" if lanes == 8 else "sse", "fma_units_assumed": fma_units,
            "ghz_assumed": round(clock, 2), "fp32_peak_gflops": round(gflops, 1)}


def macs_per_image(model, size: int) -> int:
    import torch

    total = [0]

    def hook(module, inputs, output):
        if isinstance(module, torch.nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            total[0] += output.numel() * k
        elif isinstance(module, torch.nn.Linear):
            total[0] += output.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.inference_mode():
        model(torch.zeros(1, 3, size, size))
    for h in handles:
        h.remove()
    return total[0]


def load_photos(n: int, size: int) -> list[np.ndarray]:
    from alice_gpu.decode.files import decode_path

    out = []
    for path in sorted(PHOTOS.iterdir()):
        d = decode_path(str(path), size)
        if d.pixels is not None:
            out.append(d.pixels)
        if len(out) == n:
            break
    return out


def runners(threads: int) -> dict:
    import torch

    from alice_gpu.features.models import create_model
    from alice_gpu.features.runtimes import installed

    torch.set_num_threads(threads)
    model = create_model("efficientnet_lite0", "cpu", precision="fp32")

    def torch_embed(pixels):
        batch = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2)
        with torch.inference_mode():
            return model.embed(batch).numpy()

    out = {"torch": torch_embed}
    if installed("onnxruntime"):
        from alice_gpu.features.onnx import OnnxEmbedder

        out["onnxruntime"] = OnnxEmbedder("efficientnet_lite0", threads, announce=print).embed
        out["onnxruntime-int8"] = OnnxEmbedder("efficientnet_lite0", threads, announce=print,
                                               precision="int8").embed
    return out, model


def rate(embed, photos: list[np.ndarray], batch: int, batches: int, warm: int = 2) -> float:
    laps = []
    for i in range(warm + batches):
        start = (i * batch) % max(1, len(photos) - batch + 1)
        chunk = photos[start:start + batch]
        t = time.perf_counter()
        embed(chunk)
        if i >= warm:
            laps.append(time.perf_counter() - t)
    return batch / statistics.median(laps)


def variants(folder: Path, total: int) -> Path:
    """``total`` distinct files made from the photos (resized, cropped, recompressed,
    mirrored, turned): a set the size of a small collection, made once in ``folder``."""
    from PIL import Image, ImageOps

    folder.mkdir(parents=True, exist_ok=True)
    if len(list(folder.iterdir())) >= total:
        return folder
    edits = [lambda im: im.resize((im.width * 3 // 4, im.height * 3 // 4)),
             lambda im: im.crop((im.width // 10, im.height // 10, im.width, im.height)),
             ImageOps.mirror, lambda im: im.rotate(90, expand=True),
             lambda im: im.resize((im.width // 2, im.height // 2)),
             lambda im: ImageOps.autocontrast(im), lambda im: im.rotate(180),
             lambda im: im.crop((0, 0, im.width * 4 // 5, im.height * 4 // 5)),
             ImageOps.flip]
    photos, n = sorted(PHOTOS.iterdir()), 0
    for k, edit in enumerate(edits):
        for p in photos:
            if n == total:
                return folder
            edit(Image.open(p).convert("RGB")).save(folder / f"{k}-{p.stem}.jpg", quality=85)
            n += 1
    return folder


def whole_index(folders: dict[str, Path], runtimes: list[str], passes: int) -> dict:
    """``alice-gpu index`` of each folder, --device cpu, a fresh index per run, runtimes
    interleaved: files/s as the run reports it, and the run's own stage seconds."""
    import shutil
    import subprocess
    import tempfile

    exe = [sys.executable, "-m", "alice_gpu"]
    out: dict = {}
    for label, folder in folders.items():
        for p in range(passes):
            for runtime in runtimes:
                db = Path(tempfile.mkdtemp(prefix="bench-embed-"))
                how = ["--runtime", runtime]
                if runtime == "int8":                  # features.precision: int8
                    (db / "int8.yaml").write_text("features:\n  precision: int8\n")
                    how = ["--runtime", "onnxruntime", "--config", str(db / "int8.yaml")]
                done = subprocess.run([*exe, "index", str(folder), "--db", str(db / "db"),
                                       "--device", "cpu", *how, "--json",
                                       "--progress", "none"], capture_output=True, text=True)
                shutil.rmtree(db, ignore_errors=True)
                assert done.returncode == 0, done.stderr[-2000:]
                doc = json.loads(done.stdout)
                out.setdefault(label, {}).setdefault(runtime, []).append(
                    {"files_per_s": round(doc["files_per_second"], 1),
                     "seconds": round(doc["seconds"], 1), "runtime": doc["runtime"],
                     "stages": {k: round(v, 1) for k, v in
                                doc["metrics"]["stage_seconds"].items()}})
        base = statistics.median(r["files_per_s"] for r in out[label]["torch"])
        for runtime in runtimes:
            best = statistics.median(r["files_per_s"] for r in out[label][runtime])
            out[label][f"{runtime}_vs_torch"] = round(best / base, 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=128)
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--batches", type=int, default=6, help="timed batches per pass")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--ghz", type=float, help="the clock for the peak (default: /proc/cpuinfo)")
    ap.add_argument("--fma-units", type=int, default=2)
    ap.add_argument("--whole", type=int, default=0, metavar="N",
                    help="also time whole index runs: the photos, and N files made from them")
    ap.add_argument("--int8", action="store_true",
                    help="with --whole: also time index runs with features.precision: int8")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--write", action="store_true", help="record the figures in RESULTS.md")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    photos = load_photos(args.photos, 256)
    embed, model = runners(args.threads)
    peak = cpu_peak(args.ghz, args.fma_units)
    macs = macs_per_image(model, model.cfg.input_size)
    reference = np.concatenate([embed["torch"](photos[i:i + 32])
                                for i in range(0, len(photos), 32)])
    doc = {"date": dt.date.today().isoformat(), "machine": peak, "threads": args.threads,
           "photos": len(photos), "macs_per_image": macs,
           "gflop_per_image": round(2 * macs / 1e9, 3),
           "roofline_images_per_s": round(peak["fp32_peak_gflops"] / (2 * macs / 1e9), 1),
           "runtimes": {}}
    for name, fn in embed.items():
        got = np.concatenate([fn(photos[i:i + 32]) for i in range(0, len(photos), 32)])
        cos = np.sum(got * reference, axis=1)
        doc["runtimes"][name] = {"cosine_min": float(cos.min()),
                                 "cosine_median": float(np.median(cos)), "rates": {}}
    for batch in (32, 1):
        for p in range(args.passes):
            for name, fn in embed.items():         # interleaved: A, B, A, B
                r = rate(fn, photos, batch, args.batches if batch > 1 else 4 * args.batches)
                doc["runtimes"][name]["rates"].setdefault(str(batch), []).append(round(r, 1))
    for name, entry in doc["runtimes"].items():
        for batch, rates in entry["rates"].items():
            best = statistics.median(rates)
            entry[f"batch{batch}_images_per_s"] = round(best, 1)
            entry[f"batch{batch}_peak_share"] = round(best * 2 * macs / 1e9
                                                      / peak["fp32_peak_gflops"], 3)
    torch32 = doc["runtimes"]["torch"]["batch32_images_per_s"]
    for entry in doc["runtimes"].values():
        entry["batch32_vs_torch"] = round(entry["batch32_images_per_s"] / torch32, 2)
    if args.whole:
        made = variants(Path(tempfile_dir()) / f"alice-variants-{args.whole}", args.whole)
        doc["whole_index"] = whole_index({"photos": PHOTOS, f"variants{args.whole}": made},
                                         ["auto", "torch", *(["int8"] if args.int8 else [])],
                                         args.passes)
    print(json.dumps(doc, indent=1) if args.json else json.dumps(doc))
    if args.write:
        from results import record

        record("embed", doc)


if __name__ == "__main__":
    main()
