"""Videos (issue 24): copies found, stills found in clips, throughput, memory on a long 4K clip.

    python benchmarks/bench_video.py quality [--set DIR] [--sources 20] [--write]
    python benchmarks/bench_video.py speed [--clips 4] [--write]
    python benchmarks/bench_video.py long4k [--minutes 20] [--write]

quality: the generated set of tests/videoset.py (sources of 16-40 s from the real
photos, ten copies each, distractors of the same length or intro), indexed and
``duplicates --json``: precision and recall on pairs, recall per transform (the
source-copy pairs), pairs that share only an intro; then a still from the middle of
each source: is the source (and how many of its copies) in ``similar``'s top 5, and
how far the frame's time is from the still's.

speed: 1080p clips of 60 s (30 fps, a keyframe a second as phones write them, x264
veryfast at CRF 18 over a pan with sensor noise: about a phone's bitrate), run
through ``alice-gpu index`` (sampled keyframes, hashes, embeddings, the store) and,
in the same run, through PyAV decoding every frame (the baseline); videos a minute.

long4k: one 3840x2160 clip of 20 minutes (a 10 s encoded segment repeated by
remuxing its packets), indexed alone: peak RSS of the process tree, decoded frames,
wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
CLI = [sys.executable, "-m", "alice_gpu"]
PHOTOS = ROOT.parent / "shared" / "data" / "photo_collection" / "images"


def cli(*args) -> tuple[int, str, str, float, float]:
    """The CLI as its own process: (code, stdout, stderr, wall s, peak tree RSS MiB)."""
    import psutil

    t = time.perf_counter()
    proc = subprocess.Popen([*CLI, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    peak = [0.0]
    done = threading.Event()

    def watch():
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                tree = [root, *root.children(recursive=True)]
                peak[0] = max(peak[0], sum(p.memory_info().rss for p in tree) / 2**20)
            except psutil.Error:
                pass
            done.wait(0.1)

    th = threading.Thread(target=watch, daemon=True)
    th.start()
    out, err = proc.communicate()
    done.set()
    th.join()
    return proc.returncode, out, err, time.perf_counter() - t, peak[0]


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def quality(args) -> dict:
    import videoset

    folder = Path(args.set)
    truth_file = folder / "truth.pkl"
    if truth_file.exists():
        vs = pickle.loads(truth_file.read_bytes())
    else:
        vs = videoset.make_set(folder / "clips", videoset.photo_list(PHOTOS), args.sources,
                               seed=1, durations=(16, 40))
        truth_file.write_bytes(pickle.dumps(vs))
    db = folder / "db"
    code, out, err, wall, rss = cli("index", vs.folder, "--db", db, "--json")
    if code not in (0, 1):
        raise SystemExit(err[-2000:])
    indexed = json.loads(out)
    code, out, err, dwall, _ = cli("duplicates", "--db", db, "--json")
    doc = json.loads(out)
    pairs = set()
    for g in doc["groups"]:
        names = sorted(os.path.basename(f["path"]) for f in g["files"])
        pairs |= {frozenset((a, b)) for i, a in enumerate(names) for b in names[i + 1:]}
    truth = vs.positives()
    tp = len(pairs & truth)
    per = {}
    for t in videoset.TRANSFORMS:
        want = {frozenset((f"{c.family}.mp4", c.name)) for c in vs.clips if c.transform == t}
        per[t] = round(len(want & pairs) / len(want), 3)
    distractors = {c.name for c in vs.clips if not c.family}
    sources = {c.name for c in vs.clips if c.transform == "source"}
    stills = _stills(vs, db)
    return {"machine": machine(), "sources": sum(1 for c in vs.clips if c.transform == "source"),
            "clips": len(vs.clips), "true_pairs": len(truth), "grouped_pairs": len(pairs),
            "precision": round(tp / max(1, len(pairs)), 4), "recall": round(tp / len(truth), 4),
            "per_transform_recall": per,
            "distractor_pairs_grouped": sum(1 for p in pairs if p & distractors),
            "source_pairs_grouped": sum(1 for p in pairs if len(p & sources) == 2),
            "index_s": round(wall, 1), "index_peak_mib": round(rss),
            "index_failed": indexed["failed"], "duplicates_s": round(dwall, 2),
            "checks": doc.get("checks"), **stills}


def _stills(vs, db: Path) -> dict:
    """A still from the middle of each source: its clip in the top 5, and the time."""
    import tempfile

    import videoset
    from PIL import Image

    found, copies, errors = 0, [], []
    with tempfile.TemporaryDirectory() as tmp:
        for c in vs.clips:
            if c.transform != "source":
                continue
            frames = videoset.read(vs.folder / c.name)
            mid = len(frames) // 2
            still = Path(tmp) / f"{c.family}.jpg"
            Image.fromarray(frames[mid]).save(still, quality=90)
            del frames
            code, out, err, _, _ = cli("similar", still, "--db", db, "--k", "5", "--json")
            res = json.loads(out)["results"]
            names = {os.path.basename(r["path"]): r for r in res}
            if c.name in names:
                found += 1
                errors.append(abs(names[c.name]["at"] - mid / videoset.FPS))
            copies.append(sum(1 for n in names if n.startswith(c.family)))
    return {"stills_source_in_top5": found, "stills": len(copies),
            "stills_family_in_top5_mean": round(float(np.mean(copies)), 2),
            "stills_time_error_max_s": round(max(errors), 2) if errors else None,
            "stills_time_error_mean_s": round(float(np.mean(errors)), 2) if errors else None}


def _hd_clips(folder: Path, n: int) -> list[Path]:
    import av
    from PIL import Image

    import videoset

    folder.mkdir(parents=True, exist_ok=True)
    photos = videoset.photo_list(PHOTOS)
    out = []
    for k in range(n):
        path = folder / f"hd{k}.mp4"
        out.append(path)
        if path.exists():
            continue
        if k > 0:         # the first clip remuxed under another title: other bytes, same cost
            _remux(out[0], path, f"clip {k}")
            continue
        with Image.open(photos[k * 7]) as im:
            big = np.asarray(im.convert("RGB").resize((2400, 1400)))
        rng = np.random.default_rng(k)
        grain = rng.normal(0, 5, (8, 1080, 1920, 3)).astype(np.int16)   # sensor noise
        with av.open(str(path), "w") as c:
            s = c.add_stream("libx264", rate=30)
            s.width, s.height, s.pix_fmt = 1920, 1080, "yuv420p"
            s.codec_context.gop_size = 30
            s.options = {"preset": "veryfast", "crf": "18"}     # CABAC, B-frames: a phone's
            for i in range(60 * 30):
                x = int(480 * i / 1800)
                px = np.clip(big[160:1240, x:x + 1920] + grain[i % 8], 0, 255).astype(np.uint8)
                f = av.VideoFrame.from_ndarray(px, format="rgb24")
                for p in s.encode(f):
                    c.mux(p)
            for p in s.encode():
                c.mux(p)
    return out


def _remux(src: Path, dst: Path, title: str) -> None:
    import av

    with av.open(str(src)) as i, av.open(str(dst), "w") as o:
        o.metadata["title"] = title
        s_in = i.streams.video[0]
        s_out = o.add_stream_from_template(s_in)
        for p in i.demux(s_in):
            if p.dts is None:
                continue
            p.stream = s_out
            o.mux(p)


def speed(args) -> dict:
    import av

    folder = Path(args.set) / "hd"
    clips = _hd_clips(folder, args.clips)
    t = time.perf_counter()
    frames = 0
    for path in clips:                       # the baseline: every frame decoded
        with av.open(str(path)) as c:
            s = c.streams.video[0]
            s.thread_type = "AUTO"
            for _ in c.decode(s):
                frames += 1
    base = time.perf_counter() - t
    db = Path(args.set) / "hd-db"
    if db.exists():
        import shutil

        shutil.rmtree(db)
    code, out, err, wall, rss = cli("index", folder, "--db", db, "--json")
    doc = json.loads(out)
    return {"machine": machine(), "clips": len(clips), "resolution": "1920x1080",
            "seconds_each": 60, "fps": 30,
            "baseline_decode_all_s": round(base, 2), "baseline_frames": frames,
            "baseline_videos_per_min": round(60 * len(clips) / base, 2),
            "index_s": round(wall, 2), "index_videos_per_min": round(60 * len(clips) / wall, 2),
            "index_decoded": doc["decoded"], "index_failed": doc["failed"],
            "index_peak_mib": round(rss), "speedup": round(base / wall, 2)}


def long4k(args) -> dict:
    import av

    folder = Path(args.set) / "4k"
    folder.mkdir(parents=True, exist_ok=True)
    seg, path = folder / "segment.mp4", folder / f"long-{args.minutes}min-4k.mp4"
    if not path.exists():
        _segment(seg)
        with av.open(str(seg)) as src, av.open(str(path), "w") as dst:
            s_in = src.streams.video[0]
            s_out = dst.add_stream_from_template(s_in)
            packets = [p for p in src.demux(s_in) if p.size]
            span = 10 * 25 * int(1 / (s_in.time_base * 25))        # 10 s in time_base units
            for k in range(args.minutes * 6):
                for p in packets:
                    q = av.Packet(bytes(p))
                    q.pts, q.dts = p.pts + k * span, p.dts + k * span
                    q.is_keyframe, q.time_base, q.stream = p.is_keyframe, p.time_base, s_out
                    dst.mux(q)
    db = folder / "db"
    if db.exists():
        import shutil

        shutil.rmtree(db)
    code, out, err, wall, rss = cli("index", path, "--db", db, "--json")
    doc = json.loads(out)
    code, out, _, _, _ = cli("show", path, "--db", db, "--json")
    row = json.loads(out)
    return {"machine": machine(), "file_mib": round(path.stat().st_size / 2**20),
            "duration_s": row.get("duration"), "resolution": f"{row.get('width')}x{row.get('height')}",
            "sampled_frames": row.get("sampled"), "index_s": round(wall, 1),
            "peak_tree_rss_mib": round(rss), "failed": doc["failed"],
            "metrics_peak_mb": doc["metrics"].get("memory_usage_mb")}


def _segment(path: Path) -> None:
    import av
    from PIL import Image

    import videoset

    with Image.open(videoset.photo_list(PHOTOS)[3]) as im:
        big = np.asarray(im.convert("RGB").resize((4600, 2600)))
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 3840, 2160, "yuv420p"
        s.codec_context.gop_size = 50
        s.options = {"preset": "ultrafast", "crf": "28", "bframes": "0"}
        for i in range(250):
            x = int(700 * i / 250)
            f = av.VideoFrame.from_ndarray(np.ascontiguousarray(big[200:2360, x:x + 3840]),
                                           format="rgb24")
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("quality", "speed", "long4k"))
    ap.add_argument("--set", default="/tmp/alice-videos")
    ap.add_argument("--sources", type=int, default=20)
    ap.add_argument("--clips", type=int, default=4)
    ap.add_argument("--minutes", type=int, default=20)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    doc = {"quality": quality, "speed": speed, "long4k": long4k}[args.what](args)
    print(json.dumps(doc, indent=2))
    if args.write:
        from results import record

        record(f"video_{args.what}", doc)


if __name__ == "__main__":
    main()
