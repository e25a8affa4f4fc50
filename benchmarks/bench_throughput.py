"""Throughput, scaling and memory of alice-gpu side by side with the tools users would pick.

    pip install -e '.[dev,bench]'
    python benchmarks/bench_throughput.py [--sizes 100 1000 4000 10000] [--repeat 5] [--workers N]
                                          [--against DIR] [--write]

Every tool is timed end to end as a separate command (interpreter start-up
included) on the same files, in the same run:
  * decode floor: Pillow open + draft + 32 px grayscale resize, process pool of N workers
  * imagehash.phash in a process pool of N workers
  * imagededup PHash().encode_images(num_enc_workers=N)
  * alice-gpu index --no-embed, and alice-gpu index (hashes + embeddings), fresh index each
Sets larger than the 462 real photos of ``photo_collection`` are made by copying
them into a temporary folder under distinct names with distinct bytes (a counter
appended after the JPEG end marker, which decoders ignore), so that no two files
are byte-identical and content-hash reuse cannot flatter alice-gpu.

Also measured: sequential vs parallel (workers 1 vs N), the in-process/pool
threshold, the embedding stage alone (naive eager fp32 vs ours), the N-S score
with the precision used, and a re-index of 100,000 unchanged small files.
``--against DIR`` adds another source tree of alice-gpu (e.g. a ``git worktree`` of
an earlier commit) as one more hash-only contender, interleaved with the others, so a
change is judged by a ratio measured side by side in one run.
With --write the report replaces the throughput section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data"
PHOTOS = DATA / "photo_collection" / "images"
RESULTS = REPO / "benchmarks" / "RESULTS.md"
BEGIN, END = "<!-- throughput:begin -->", "<!-- throughput:end -->"


# ------------------------------------------------------------------ helpers

def make_set(src: Path, n: int, dest: Path) -> Path:
    """``n`` files from the real photos: copies get a distinct suffix after the JPEG end."""
    originals = sorted(p for p in src.iterdir() if p.is_file())
    dest.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        orig = originals[i % len(originals)]
        target = dest / f"{i:06d}_{orig.name}"
        if i < len(originals):
            shutil.copyfile(orig, target)
        else:
            target.write_bytes(orig.read_bytes() + f"alice-copy-{i}".encode())
    return dest


CPU_OF_LAST: list[float] = [0.0]   # user + sys of the last timed command's process tree


def timed(cmd: list[str]) -> tuple[float, dict | None]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)   # workers included: all were waited for
    CPU_OF_LAST[0] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if res.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(cmd[:4])} failed ({res.returncode}): {res.stderr[-3000:]}")
    try:
        return wall, json.loads(res.stdout)
    except ValueError:
        return wall, None


def alice(*args: str) -> list[str]:
    exe = shutil.which("alice-gpu") or str(Path(sys.executable).with_name("alice-gpu"))
    return [exe, *args, "--json"]


def baseline(tree: Path, *args: str) -> list[str]:
    """alice-gpu from another source tree (its own package, this environment's libraries)."""
    # -P: the tree's package, not one in the working directory
    return ["env", f"PYTHONPATH={tree}", sys.executable, "-P", "-m", "alice_gpu.cli", *args,
            "--json"]


def peer(kind: str, folder: Path, workers: int) -> list[str]:
    """A peer tool's command (benchmarks/peers.py, from cached bytecode)."""
    here = str(Path(__file__).resolve().parent)
    return [sys.executable, "-c", f"import sys; sys.path.insert(0, {here!r}); "
            "import peers; peers.main()", kind, str(folder), str(workers)]


def compile_bytecode(against: Path | None = None) -> None:
    """Write .pyc files as ``pip install`` does (this machine sets PYTHONDONTWRITEBYTECODE,
    which would otherwise make alice-gpu and the peers recompile their sources every run)."""
    import compileall

    for folder in (REPO / "alice_gpu", REPO / "benchmarks",
                   *([against / "alice_gpu"] if against else [])):
        compileall.compile_dir(str(folder), quiet=1)


# ------------------------------------------------------------------ measurements

def end_to_end(sizes: list[int], workers: int, tmp: Path, repeat: int,
               against: Path | None = None) -> list[dict]:
    rows = []
    for n in sizes:
        folder = make_set(PHOTOS, n, tmp / f"set{n}")
        row: dict = {"n": n}
        common = [str(folder), "--device", "cpu", "--workers", str(workers)]
        # the three hash-only contenders, interleaved, `repeat` times each: the median stands
        # (this machine shares its cores; one slow run should not decide a ratio)
        runs: dict[str, list[float]] = {"floor": [], "imagehash": [], "hash": []}
        cpu: dict[str, list[float]] = {"floor": [], "hash": []}
        if against:
            runs["against"], cpu["against"] = [], []
        for _ in range(repeat):
            if against:
                shutil.rmtree(tmp / f"b{n}", ignore_errors=True)
                runs["against"].append(timed(baseline(against, "index", *common, "--no-embed",
                                                      "--db", str(tmp / f"b{n}")))[0])
                cpu["against"].append(CPU_OF_LAST[0])
            runs["floor"].append(timed(peer("floor", folder, workers))[0])
            cpu["floor"].append(CPU_OF_LAST[0])
            runs["imagehash"].append(timed(peer("imagehash", folder, workers))[0])
            shutil.rmtree(tmp / f"h{n}", ignore_errors=True)
            wall, doc = timed(alice("index", *common, "--no-embed", "--db", str(tmp / f"h{n}")))
            runs["hash"].append(wall)
            cpu["hash"].append(CPU_OF_LAST[0])
        for key, walls in runs.items():
            row[key] = statistics.median(walls)
            row[f"{key}_runs"] = walls
        for key, secs in cpu.items():
            row[f"{key}_cpu"] = statistics.median(secs)
        row["hash_rss"] = doc["metrics"]["memory_usage_mb"]
        row["imagededup"], _ = timed(peer("imagededup", folder, workers))
        row["hash_seq"], _ = timed(alice("index", str(folder), "--device", "cpu", "--workers", "1",
                                         "--no-embed", "--db", str(tmp / f"hs{n}")))
        # full runs: the small ones are repeated too (their fixed costs, torch import and
        # model load, make them the noisy end of the scaling ratio); 4,000+ run once
        fulls = []
        for _ in range(min(repeat, 3) if n <= 1000 else 1):
            shutil.rmtree(tmp / f"f{n}", ignore_errors=True)
            wall, doc = timed(alice("index", *common, "--db", str(tmp / f"f{n}")))
            fulls.append(wall)
        row["full"], row["full_runs"] = statistics.median(fulls), fulls
        row["full_rss"] = doc["metrics"]["memory_usage_mb"]
        row["full_stages"] = doc["metrics"]["stage_seconds"]
        row["full_batch_eff"] = doc["metrics"]["batch_efficiency"]
        row["rerun"], _ = timed(alice("index", *common, "--db", str(tmp / f"f{n}")))
        shutil.rmtree(folder)
        for d in ("h", "hs", "f", "b"):
            shutil.rmtree(tmp / f"{d}{n}", ignore_errors=True)
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def threshold(workers: int, tmp: Path) -> list[tuple[int, float, float]]:
    """In-process vs pool decode for small jobs: where the pool starts to pay."""
    sys.path.insert(0, str(REPO))
    from alice_gpu.decode import DecodePlan
    from alice_gpu.discover import walk
    from alice_gpu.pipeline.dispatch import decode_stream
    from alice_gpu.pipeline.pool import DecodePool

    folder = make_set(PHOTOS, 200, tmp / "thr")
    entries = list(walk([folder]))
    plan = DecodePlan(256, "RGB", hash_in_worker=True, keep_pixels=True)
    out = []
    for n in (4, 8, 16, 24, 32, 48, 64, 128, 200):
        part = entries[:n]
        t = time.perf_counter()
        list(decode_stream(part, plan, None, 200, parallel_threshold=10**9))
        seq = time.perf_counter() - t
        t = time.perf_counter()
        pool = DecodePool(workers, 60.0)   # pool start-up is part of the cost being measured
        list(decode_stream(part, plan, pool, 200, parallel_threshold=0))
        pool.close()
        par = time.perf_counter() - t
        out.append((n, seq, par))
    shutil.rmtree(folder)
    return out


def embedding_stage(batch: int = 100) -> dict:
    """The embedding stage alone on real decoded photos, same batch size for both."""
    import numpy as np
    import torch

    sys.path.insert(0, str(REPO))
    from alice_gpu.decode import DecodePlan, decode_files
    from alice_gpu.discover import walk
    from alice_gpu.features.models import create_model
    from alice_gpu.gpu.devices import model_batch_size, resolve_precision

    entries = list(walk([PHOTOS]))[:2 * batch]
    pix = np.stack([d.pixels for d in decode_files(entries, DecodePlan(256))])
    x = torch.from_numpy(pix).permute(0, 3, 1, 2).contiguous()
    cpu = torch.device("cpu")
    naive = create_model("efficientnet_lite0", cpu, optimize=False)
    prec = resolve_precision(cpu, "auto")
    variants = {
        "naive eager fp32 (whole batch)": (naive, batch),
        "fused + channels_last fp32, micro-batch 8": (
            create_model("efficientnet_lite0", cpu, precision="fp32"), model_batch_size(cpu)),
        f"fused + channels_last {prec}, micro-batch 8 (default)": (
            create_model("efficientnet_lite0", cpu, precision=prec), model_batch_size(cpu)),
    }
    out = {}
    ref = None
    for name, (model, micro) in variants.items():
        def run(model=model, micro=micro):
            with torch.no_grad():
                return torch.cat([model.embed(x[i:i + micro]) for i in range(0, len(x), micro)])
        run()  # warm-up
        t = time.perf_counter()
        emb = run()
        secs = time.perf_counter() - t
        ref = emb if ref is None else ref
        cos = torch.nn.functional.cosine_similarity(ref, emb).min().item()
        out[name] = {"img_s": len(x) / secs, "min_cosine_vs_naive": cos}
    return {"precision": prec, "batch": batch, "variants": out}


def ns_score(tmp: Path) -> dict:
    sys.path.insert(0, str(REPO))
    import csv

    import alice_gpu

    nd = DATA / "near_duplicates"
    idx = alice_gpu.open_index(tmp / "ns")
    idx.index([nd, PHOTOS], device="cpu")
    group = {os.path.normpath(nd / r["file"]): r["group"] for r in csv.DictReader(open(nd / "groups.csv"))}
    queries = sorted(p for p in group if "/ukbench/" in p)
    out = {}
    for by in ("embedding", "phash"):
        hits = sum(sum(group.get(m.path) == group[q] for m in idx.similar(q, k=4, by=by).results)
                   for q in queries)
        out[by] = hits / len(queries)
    return out


def reindex_100k(tmp: Path, n: int = 100_000) -> dict:
    """Stat, skip and write on a large unchanged tree of small generated images."""
    from PIL import Image

    folder = tmp / "many"
    base = tmp / "tiny.jpg"
    Image.new("RGB", (16, 16), (120, 30, 200)).save(base, quality=80)
    data = base.read_bytes()
    for d in range(n // 1000):
        sub = folder / f"d{d:03d}"
        sub.mkdir(parents=True)
        for i in range(1000):
            (sub / f"{i:04d}.jpg").write_bytes(data + f"{d}-{i}".encode())
    first, doc1 = timed(alice("index", str(folder), "--no-embed", "--db", str(tmp / "db100k")))
    second, doc2 = timed(alice("index", str(folder), "--no-embed", "--db", str(tmp / "db100k")))
    shutil.rmtree(folder)
    return {"n": n, "first": first, "first_decoded": doc1["decoded"], "reindex": second,
            "reindex_unchanged": doc2["unchanged"], "reindex_decoded": doc2["decoded"]}


# ------------------------------------------------------------------ report

def _walls(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def report(args, rows, thr, emb, ns, big) -> str:
    import torch

    w = args.workers
    lines = [BEGIN, f"## Throughput (benchmarks/bench_throughput.py), {dt.date.today()}", ""]
    lines.append(f"Machine: {platform.machine()} {os.cpu_count()} cores "
                 f"({platform.processor() or 'cpu'}), no GPU (`--device cpu`); Python "
                 f"{platform.python_version()}, torch {torch.__version__}, workers {w}. Wall "
                 "seconds of each whole command, interpreter start-up included, same files, same "
                 f"run; the floor, imagehash and alice --no-embed were run {args.repeat} times each, "
                 "interleaved, and alice full 3 times up to 1,000 files; the median is shown (all "
                 "runs are listed below the table). "
                 "Every command runs from compiled bytecode, as after `pip install` "
                 "(benchmarks/peers.py holds the peers). "
                 "Sets above 462 files are copies of `photo_collection` with distinct names "
                 "and distinct bytes (a counter appended after the JPEG end marker).")
    lines += ["", "| files | decode floor | imagehash.phash | imagededup PHash | alice --no-embed "
              "| alice full | full re-run | no-embed vs imagehash | no-embed / floor speed |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['n']:,} | {r['floor']:.2f} | {r['imagehash']:.2f} | "
                     f"{r['imagededup']:.2f} | {r['hash']:.2f} | {r['full']:.2f} | "
                     f"{r['rerun']:.2f} | {r['imagehash'] / r['hash']:.2f}x | "
                     f"{r['floor'] / r['hash']:.2f}x |")
    lines += [""] + [f"Runs at {r['n']:,} files, s: floor {_walls(r['floor_runs'])}; imagehash "
                     f"{_walls(r['imagehash_runs'])}; alice --no-embed {_walls(r['hash_runs'])}; "
                     f"alice full {_walls(r['full_runs'])}. No-embed / floor speed of each "
                     "interleaved repeat: " + ", ".join(
                         f"{f / h:.2f}x" for f, h in zip(r['floor_runs'], r['hash_runs'])) + "."
                     for r in rows]
    if args.against:
        lines += ["", f"Against `{args.against}` (another source tree of alice-gpu: "
                  f"{args.against_label}), hash-only, run in the same interleaved repeats; the "
                  "ratio is this tree's speed over that one's (1.00x = the same):", "",
                  "| files | that tree --no-embed s | this tree --no-embed s | speed ratio | "
                  "ratio of each repeat | CPU s that / this |", "|---:|---:|---:|---:|---|---:|"]
        lines += [f"| {r['n']:,} | {r['against']:.2f} | {r['hash']:.2f} | "
                  f"{r['against'] / r['hash']:.3f}x | "
                  + ", ".join(f"{a / h:.2f}" for a, h in zip(r["against_runs"], r["hash_runs"]))
                  + f" | {r['against_cpu']:.2f} / {r['hash_cpu']:.2f} |" for r in rows]
    lines += ["", "CPU seconds (user + sys of each command's process tree, workers included; "
              "median), which this shared machine's drift moves less than wall time:", "",
              "| files | decode floor CPU s | alice --no-embed CPU s | floor / alice CPU |",
              "|---:|---:|---:|---:|"]
    lines += [f"| {r['n']:,} | {r['floor_cpu']:.2f} | {r['hash_cpu']:.2f} | "
              f"{r['floor_cpu'] / r['hash_cpu']:.2f}x |" for r in rows]
    lines += ["", "Sequential vs parallel (alice-gpu --no-embed, start-up included) and memory "
              "(peak RSS of the process tree, workers included):", "",
              "| files | 1 worker s | files/s | %d workers s | files/s | speed-up | "
              "peak RSS no-embed MB | peak RSS full MB | full files/s |" % w,
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['n']:,} | {r['hash_seq']:.2f} | {r['n'] / r['hash_seq']:.0f} | "
                     f"{r['hash']:.2f} | {r['n'] / r['hash']:.0f} | "
                     f"{r['hash_seq'] / r['hash']:.2f}x | {r['hash_rss']:.0f} | "
                     f"{r['full_rss']:.0f} | {r['n'] / r['full']:.1f} |")
    if len(rows) >= 2:
        b = rows[-1]
        lines.append("")
        for a in [r for r in rows[:-1] if r["n"] >= 1000]:
            scale = b["n"] / a["n"]
            marginal = (b["full"] - a["full"]) / (b["n"] - a["n"]) * 1000
            lines.append(f"Scaling {a['n']:,} → {b['n']:,} files (x{scale:.1f}): full wall x"
                         f"{b['full'] / a['full']:.2f} (marginal {marginal:.1f} ms/file), no-embed "
                         f"wall x{b['hash'] / a['hash']:.2f}; peak RSS full {a['full_rss']:.0f} → "
                         f"{b['full_rss']:.0f} MB ({(b['full_rss'] / a['full_rss'] - 1) * 100:+.1f}%), "
                         f"no-embed {a['hash_rss']:.0f} → {b['hash_rss']:.0f} MB.")
        st = b["full_stages"]
        lines.append(f"Stage seconds of the {b['n']:,}-file full run: "
                     + ", ".join(f"{k} {v:.1f}" for k, v in st.items())
                     + f" (decode = time the device side waited for decoded batches); "
                     f"batch efficiency {b['full_batch_eff']:.2f}.")
    if thr:
        lines += ["", "In-process vs pool decode (256 px RGB + worker hashes), seconds:", "",
                  "| files | in-process | pool | faster |", "|---:|---:|---:|---|"]
    for n, seq, par in thr:
        lines.append(f"| {n} | {seq:.3f} | {par:.3f} | {'in-process' if seq < par else 'pool'} |")
    if emb is None:
        lines += ["", END]
        return "\n".join(lines) + "\n"
    lines += ["", f"Embedding stage alone (EfficientNet-Lite0, {2 * emb['batch']} real photos, "
              f"batches of {emb['batch']}, 2 torch threads):", "",
              "| variant | img/s | vs naive | min cosine vs naive |", "|---|---:|---:|---:|"]
    base = next(iter(emb["variants"].values()))["img_s"]
    for name, v in emb["variants"].items():
        lines.append(f"| {name} | {v['img_s']:.1f} | {v['img_s'] / base:.2f}x | "
                     f"{v['min_cosine_vs_naive']:.4f} |")
    lines += ["", f"N-S score (UKBench, top 4, photos as distractors) with precision "
              f"{emb['precision']}: embedding {ns['embedding']:.2f}, pHash {ns['phash']:.2f}."]
    if big:
        lines += ["", f"Re-index of {big['n']:,} unchanged small generated JPEGs (--no-embed): "
                  f"{big['reindex']:.1f} s wall ({big['reindex_unchanged']:,} unchanged, "
                  f"{big['reindex_decoded']} decoded); the first index of them took "
                  f"{big['first']:.1f} s."]
    lines += ["", END]
    return "\n".join(lines) + "\n"


def _describe(tree: Path) -> str:
    """The commit a source tree is at, for the report."""
    res = subprocess.run(["git", "-C", str(tree), "log", "-1", "--format=%h %s"],
                         capture_output=True, text=True)
    return res.stdout.strip()[:80] or "not a git checkout"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 4000, 10000])
    ap.add_argument("--repeat", type=int, default=5,
                    help="runs of each hash-only contender per size (median reported)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--skip-100k", action="store_true")
    ap.add_argument("--only-end-to-end", action="store_true",
                    help="skip the threshold, embedding-stage, N-S and 100k measurements")
    ap.add_argument("--against", type=Path, help="another alice-gpu source tree to compare with")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    args.against_label = _describe(args.against) if args.against else None
    compile_bytecode(args.against)
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp_s:
        tmp = Path(tmp_s)
        rows = end_to_end(args.sizes, args.workers, tmp, args.repeat, args.against)
        quick = args.only_end_to_end
        thr = [] if quick else threshold(args.workers, tmp)
        emb = None if quick else embedding_stage()
        ns = None if quick else ns_score(tmp)
        big = None if quick or args.skip_100k else reindex_100k(tmp)
    text = report(args, rows, thr, emb, ns, big)
    print(text)
    if args.write:
        old = RESULTS.read_text() if RESULTS.exists() else "# alice-gpu benchmark results\n\n"
        if BEGIN in old:
            old = old[:old.index(BEGIN)] + old[old.index(END) + len(END) + 1:]
        RESULTS.write_text(old.rstrip("\n") + "\n\n" + text)


if __name__ == "__main__":
    main()
