"""Videos: discovery, sampling, bad input, copies aligned in time, stills found in clips.

The clips are generated here with PyAV from the real photos (tests/videoset.py); the
benchmark (benchmarks/bench_video.py) runs the same generator at 20 sources.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli, shared

av = pytest.importorskip("av", reason="needs the [video] extra (PyAV)")

import videoset  # noqa: E402  (tests/ is on the path: conftest)

from alice_gpu.decode import DecodePlan, decode_file  # noqa: E402
from alice_gpu.discover import VIDEO_SKIPPED, is_media, is_video, sniff_video  # noqa: E402
from alice_gpu.records import STATUS_OK, FileEntry  # noqa: E402


def _entry(path: Path) -> FileEntry:
    st = path.stat()
    return FileEntry(str(path), st.st_size, st.st_mtime_ns)


@pytest.fixture(scope="module")
def photos():
    return videoset.photo_list(shared("photo_collection", "images"))


@pytest.fixture(scope="module")
def small_set(tmp_path_factory, photos):
    """3 sources of 16-20 s (black intro, title intro, none), their 10 copies each, and
    3 distractors (same intro and length; same length), indexed."""
    folder = tmp_path_factory.mktemp("videos")
    vs = videoset.make_set(folder / "clips", photos, sources=3, seed=7, durations=(16, 20))
    db = folder / "db"
    code, out, err = run_cli("index", folder / "clips", "--db", db, "--json")
    assert code == 0, err
    return vs, db


def _clip(folder: Path, name: str, seconds: float = 4, **kw) -> Path:
    rng = np.random.default_rng(len(name))
    photos = videoset.photo_list(shared("photo_collection", "images"))[:2]
    frames = videoset.source_frames(photos, seconds, rng, kw.pop("intro", ""))
    path = folder / name
    videoset.write(path, frames, **kw)
    return path


def test_discovery_by_extension_and_content(tmp_path):
    clip = _clip(tmp_path, "a.mp4", 2)
    odd = tmp_path / "noext"
    odd.write_bytes(clip.read_bytes())
    code = tmp_path / "app.ts"
    code.write_text("export const x: number = 1;\n")
    head = clip.read_bytes()[:200]
    assert sniff_video(head) and is_video(str(odd)) and is_media(str(odd))
    assert not is_media(str(code))                 # TypeScript is not MPEG-TS
    assert sniff_video(b"\x1aE\xdf\xa3" + b"\0" * 40)          # Matroska / WebM
    assert sniff_video(b"RIFF\0\0\0\0AVI LIST" + b"\0" * 40)   # AVI
    ts = bytearray(400)
    ts[0] = ts[188] = 0x47
    assert sniff_video(bytes(ts))                              # MPEG-TS
    assert not sniff_video(b"\0\0\0\x18ftypheic" + b"\0" * 40)  # a HEIC picture


def test_facts_frames_rotation_and_intro(tmp_path, photos):
    path = tmp_path / "phone.mov"
    frames = videoset.source_frames(photos[:2], 8, np.random.default_rng(1), "black")
    videoset.write(path, frames, rotation=90)
    d = decode_file(_entry(path), DecodePlan(64))
    assert d.status == STATUS_OK, d.error
    assert (d.width, d.height) == (480, 640)       # portrait once turned by its matrix
    assert d.format == "MOV"
    m = d.meta
    assert m["kind"] == "video" and m["codec"] == "h264" and m["rotation"] == 90
    assert m["duration"] == pytest.approx(8.0, abs=0.1) and m["fps"] == pytest.approx(25)
    assert m["audio"] is False
    t = d.frames.times
    assert t.min() >= 2.9            # the 3 s black intro is not sampled
    assert len(t) >= 5 and np.all(np.diff(t) > 0) and t.max() < 8.0
    assert d.frames.pixels.shape[1:] == (64, 64, 3)


def test_audio_and_creation_date(tmp_path, photos):
    path = tmp_path / "with-audio.mp4"
    frames = videoset.source_frames(photos[:1], 2, np.random.default_rng(2))
    with av.open(str(path), "w") as c:
        c.metadata["creation_time"] = "2024-05-17T10:20:30.000000Z"
        v = c.add_stream("libx264", rate=25)
        v.width, v.height, v.pix_fmt = 640, 480, "yuv420p"
        a = c.add_stream("aac", rate=44100)
        for f in frames:
            for p in v.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in v.encode():
            c.mux(p)
        _silence(c, a)
    d = decode_file(_entry(path), DecodePlan(64))
    assert d.status == STATUS_OK, d.error
    assert d.meta["audio"] is True and d.meta["taken_at"].startswith("2024-05-17T10:20:30")


def _silence(container, s=None) -> None:
    """Half a second of silent AAC in audio stream ``s`` (a new one) of ``container``."""
    s = s or container.add_stream("aac", rate=44100)
    for i in range(20):
        af = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp",
                                        layout="mono")
        af.sample_rate, af.pts = 44100, i * 1024
        for p in s.encode(af):
            container.mux(p)
    for p in s.encode():
        container.mux(p)


def _bad_files(folder: Path, good: Path) -> dict[str, str]:
    """The bad inputs of the issue, each with a word its reason must hold."""
    data = good.read_bytes()
    (folder / "truncated.mp4").write_bytes(data[:len(data) // 3])
    (folder / "empty.mov").write_bytes(b"")
    (folder / "random.mkv").write_bytes(np.random.default_rng(0).bytes(30_000))
    with av.open(str(folder / "audio-only.mp4"), "w") as c:
        _silence(c)
    return {"truncated.mp4": "truncated", "empty.mov": "empty file",
            "random.mkv": "not a video", "audio-only.mp4": "no video stream"}


_HANG = """
import sys, time
import alice_gpu, alice_gpu.decode.video as video
from alice_gpu.config import load_config
real = video._sample
def sample(container, *a, **k):      # this one file's decoder never returns
    if "hangs" in container.name:
        time.sleep(3600)
    return real(container, *a, **k)
video._sample = sample
cfg = load_config(sys.argv[3])
s = alice_gpu.open_index(sys.argv[2], config=cfg).index([sys.argv[1]])
print("SUMMARY", __import__("json").dumps(s.to_dict()))
"""


def test_bad_videos_are_failures_and_the_run_goes_on(tmp_path):
    folder = tmp_path / "media"
    folder.mkdir()
    good = _clip(folder, "good.mp4", 3)
    _clip(folder, "hangs.mp4", 3)
    want = _bad_files(folder, good)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("decode:\n  timeout_seconds: 3\nperformance:\n  max_workers: 1\n")
    env = {**os.environ, "ALICE_GPU_START_METHOD": "fork"}   # the worker inherits the hang
    done = subprocess.run([sys.executable, "-c", _HANG, str(folder), str(tmp_path / "db"),
                           str(cfg)], capture_output=True, text=True, env=env, timeout=600)
    line = next(x for x in done.stdout.splitlines() if x.startswith("SUMMARY"))
    summary = json.loads(line.split(" ", 1)[1])
    reasons = {os.path.basename(f["path"]): f["error"] for f in summary["failed_files"]}
    assert summary["decoded"] == 1 and summary["failed"] == 5, reasons
    for name, word in want.items():
        assert word in reasons[name], reasons
    assert reasons["hangs.mp4"].startswith("decode timeout"), reasons
    code, out, _ = run_cli("stats", "--db", tmp_path / "db", "--json")
    st = json.loads(out)
    assert st["videos"] == 1 and st["failed"] == 5


def test_without_the_video_extra_videos_are_counted_and_named(tmp_path, monkeypatch, photos):
    import alice_gpu.discover as discover

    folder = tmp_path / "media"
    folder.mkdir()
    _clip(folder, "a.mp4", 2)
    _clip(folder, "b.mov", 2)
    (folder / "p.jpg").write_bytes(Path(photos[0]).read_bytes())
    monkeypatch.setattr(discover, "_VIDEO_SUPPORT", False)
    code, out, err = run_cli("index", folder, "--db", tmp_path / "db")
    assert code == 0, err
    assert err.count("pip install 'alice-gpu[video]'") == 1          # once a run
    code, out, _ = run_cli("stats", "--db", tmp_path / "db", "--json")
    st = json.loads(out)
    assert st["assets"] == 1 and st["skipped"] == {VIDEO_SKIPPED: 2}


def _names(groups) -> set[frozenset[str]]:
    pairs = set()
    for g in groups:
        names = sorted(os.path.basename(f["path"]) for f in g["files"])
        pairs |= {frozenset((a, b)) for i, a in enumerate(names) for b in names[i + 1:]}
    return pairs


def test_copies_align_and_intros_do_not(small_set):
    vs, db = small_set
    code, out, err = run_cli("duplicates", "--db", db, "--json")
    assert code == 0, err
    doc = json.loads(out)
    got, truth = _names(doc["groups"]), vs.positives()
    tp = len(got & truth)
    precision, recall = tp / max(1, len(got)), tp / len(truth)
    assert precision >= 0.98 and recall >= 0.9, (precision, recall, got - truth, truth - got)
    distractors = {c.name for c in vs.clips if not c.family}
    assert not any(p & distractors for p in got)          # shared intro, same length: apart
    sources = {c.name for c in vs.clips if c.transform == "source"}
    assert not any(len(p & sources) == 2 for p in got)    # two sources sharing a title card
    members = {os.path.basename(f["path"]): f for g in doc["groups"] for f in g["files"]}
    turned = members["s00-rotate-pixels.mp4"]
    assert turned["transform"] in ("rotated 90°", "rotated 270°") or turned["tier"] is None
    assert doc["checks"]["videos"]["videos"] == len(vs.clips)


def test_still_from_the_middle_finds_the_clip_and_its_copies(small_set, tmp_path):
    vs, db = small_set
    src = vs.folder / "s01.mp4"
    frames = videoset.read(src)
    mid = len(frames) // 2
    from PIL import Image

    Image.fromarray(frames[mid]).save(tmp_path / "still.jpg", quality=90)
    code, out, err = run_cli("similar", tmp_path / "still.jpg", "--db", db, "--k", "5", "--json")
    assert code == 0, err
    results = json.loads(out)["results"]
    names = [os.path.basename(r["path"]) for r in results]
    assert "s01.mp4" in names, names
    assert all(n.startswith("s01") for n in names), names       # its copies fill the rest
    at = {os.path.basename(r["path"]): r["at"] for r in results}
    assert abs(at["s01.mp4"] - mid / videoset.FPS) <= 2.0
    assert all(r["kind"] == "video" for r in results)


def test_similar_of_a_clip_kind_filter_and_poster(small_set):
    vs, db = small_set
    code, out, err = run_cli("similar", vs.folder / "s02-lowbitrate.mp4", "--db", db,
                             "--k", "3", "--json")
    assert code == 0, err
    names = [os.path.basename(r["path"]) for r in json.loads(out)["results"]]
    assert names[0] == "s02-lowbitrate.mp4" and all(n.startswith("s02") for n in names)
    code, out, _ = run_cli("find", "--kind", "video", "--db", db, "--json")
    assert code == 0 and len(json.loads(out)["results"]) == len(vs.clips)
    code, out, _ = run_cli("find", "--kind", "image", "--db", db, "--json")
    assert code == 0 and json.loads(out)["results"] == []
    import alice_gpu

    idx = alice_gpu.open_index(db)
    row = idx.show(str(vs.folder / "s00-rotate-matrix.mov"))
    thumb = idx.thumbnail(row["id"], 128)
    from io import BytesIO

    from PIL import Image

    with Image.open(BytesIO(thumb)) as im:
        assert im.size[0] < im.size[1]         # the poster is upright: portrait


def test_report_shows_posters_and_videos_move_and_come_back(small_set, tmp_path):
    """The HTML report shows each video's poster frame; --move-to sets the copies aside
    with a journal and undo brings every byte back, the index following. (Last of the
    tests on ``small_set``: it moves its files and back.)"""
    import hashlib

    vs, db = small_set

    def snapshot():
        return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
                for p in vs.folder.iterdir()}

    code, out, err = run_cli("duplicates", "--db", db, "--html", tmp_path / "r.html", "--json")
    assert code == 0, err
    groups = json.loads(out)["groups"]
    members = sum(len(g["files"]) for g in groups)
    assert (tmp_path / "r.html").read_text().count("data:image/jpeg;base64,") >= members
    before = snapshot()
    code, out, err = run_cli("duplicates", "--db", db, "--move-to", tmp_path / "aside", "--json")
    moves = json.loads(out)["moves"]
    assert code == 0 and moves["moved"] == members - len(groups) and not moves["problems"]
    assert len(snapshot()) == len(before) - moves["moved"]
    code, out, err = run_cli("undo", moves["journal"], "--db", db, "--json")
    assert code == 0 and json.loads(out)["restored"] == moves["moved"], err
    assert snapshot() == before


def test_schema_7_is_migrated_to_8_and_pictures_are_not_read_again(tmp_path, photos):
    import duckdb

    import alice_gpu
    from alice_gpu.store import Store
    from alice_gpu.store.schema import _VIDEO_META, DB_FILE, SCHEMA_VERSION, stored_version

    media = tmp_path / "m"
    media.mkdir()
    (media / "p.jpg").write_bytes(Path(photos[0]).read_bytes())
    api = alice_gpu.open_index(tmp_path / "db")
    api.index([media], embed=False)
    con = duckdb.connect(str(tmp_path / "db" / DB_FILE))
    for col in _VIDEO_META:
        con.execute(f"ALTER TABLE assets DROP COLUMN {col}")
    con.execute("DROP TABLE frames")
    con.execute("ALTER TABLE runs DROP COLUMN skipped")
    con.execute("UPDATE meta SET value = '7' WHERE key = 'schema_version'")
    con.close()
    with Store(tmp_path / "db", model="efficientnet_lite0", dim=1280) as store:
        assert stored_version(store.con) == SCHEMA_VERSION == 9
        assert store.frame_count() == 0 and len(store.video_ids()) == 0
    assert (tmp_path / "db" / f"{DB_FILE}.v7.bak").exists()
    _clip(media, "v.mp4", 3)
    summary = api.index([media], embed=False)
    assert summary.decoded == 1                    # the video only: the picture is kept
    assert api.stats()["videos"] == 1


@pytest.mark.timeout(3000)
def test_held_out_set_of_20_sources(tmp_path, photos):
    """The issue's set, generated here with another seed than the benchmark's: 20
    sources of 16-40 s, their ten copies each, 20 distractors. The default duplicates
    reaches precision >= 0.98 and recall >= 0.90 on pairs and groups no pair that
    shares only an intro or a length; a still from the middle of each source finds it
    in similar's top 5 at its time within 2 s. (Takes ~15 minutes on 2 cores.)"""
    from PIL import Image

    vs = videoset.make_set(tmp_path / "clips", photos, sources=20, seed=11, durations=(16, 40))
    db = tmp_path / "db"
    code, _, err = run_cli("index", vs.folder, "--db", db)
    assert code == 0, err
    code, out, err = run_cli("duplicates", "--db", db, "--json")
    got, truth = _names(json.loads(out)["groups"]), vs.positives()
    tp = len(got & truth)
    assert tp / max(1, len(got)) >= 0.98 and tp / len(truth) >= 0.90, (got - truth, truth - got)
    distractors = {c.name for c in vs.clips if not c.family}
    assert not any(p & distractors for p in got)
    import alice_gpu

    idx = alice_gpu.open_index(db)
    for c in vs.clips:
        if c.transform != "source":
            continue
        frames = videoset.read(vs.folder / c.name)
        mid = len(frames) // 2
        still = tmp_path / f"{c.family}.jpg"
        Image.fromarray(frames[mid]).save(still, quality=90)
        del frames
        top = idx.similar(str(still), k=5).results
        at = {os.path.basename(m.path): m.at for m in top}
        assert c.name in at, (c.name, list(at))
        assert all(n.startswith(c.family) for n in at), (c.name, list(at))
        assert abs(at[c.name] - mid / videoset.FPS) <= 2.0


def test_alignment_on_embeddings_finds_an_edited_copy_and_refuses_a_shuffle():
    """The edited tier's check: frames whose embeddings match at one offset (a copy whose
    pixels changed too much for the pHash) align; the same frames out of order do not."""
    from alice_gpu.search.videos import check_by_embeddings

    rng = np.random.default_rng(3)
    ea = rng.standard_normal((30, 64)).astype(np.float32)
    ea /= np.linalg.norm(ea, axis=1, keepdims=True)
    ta = np.arange(30, dtype=np.float64)
    noisy = ea[5:25] + 0.03 * rng.standard_normal((20, 64)).astype(np.float32)
    eb = noisy / np.linalg.norm(noisy, axis=1, keepdims=True)
    tb = np.arange(20, dtype=np.float64) + 0.3           # an excerpt from 5 s, sampled apart
    v = check_by_embeddings(ea, eb, ta, tb, 30.0, 20.0)
    assert v.verified and v.method == "embeddings" and abs(v.offset + 4.7) < 1.3
    assert v.describe() == "trimmed: starts 4.7 s in, ends 5.3 s early"
    shuffled = eb[rng.permutation(20)]
    assert not check_by_embeddings(ea, shuffled, ta, tb, 30.0, 20.0).verified
