"""The pictures' check of a pair (issue 23): a copy is one capture, a look-alike two.

Golden cases on real photos: crops, turns and mirrors in every orientation, a resized
re-encode, a local blur, frames of a generated clip, a file that went away; the
candidates' cap; and the tiers, edits and evidence ``duplicates`` gives from them.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import provenance
from alice_gpu import open_index
from alice_gpu.features.hashes_np import orient_pixels
from alice_gpu.records import ORIENTATIONS
from alice_gpu.search.ivfjoin import cap_per_node
from alice_gpu.search.verify import ORIENT_OF, Checker, describe_edit, verify_pairs
from conftest import run_cli


@pytest.fixture(scope="module")
def checker() -> Checker:
    return Checker()


@pytest.fixture(scope="module")
def photo(photos) -> Path:
    return sorted((photos / "images").iterdir())[21]


def _save(pixels: np.ndarray, path: Path, quality: int = 88) -> str:
    Image.fromarray(np.ascontiguousarray(pixels)).save(path, quality=quality)
    return str(path)


@pytest.mark.parametrize("t", range(len(ORIENTATIONS)))
def test_a_crop_in_each_orientation_is_a_copy_with_that_orientation(tmp_path, checker, photo,
                                                                     t):
    im = np.asarray(Image.open(photo).convert("RGB"))
    h, w = im.shape[:2]
    crop = im[int(h * .12):int(h * .9), int(w * .08):int(w * .85)]    # 0.78 x 0.77 = 60%
    copy = _save(orient_pixels(crop, t), tmp_path / "copy.jpg")
    v = checker.verify(str(photo), copy)
    assert v.verified and v.method == "keypoints", v
    assert ORIENT_OF[v.orientation()] == t
    assert v.area_a == pytest.approx(0.60, abs=0.03) and v.area_b > 0.97
    assert describe_edit(v).startswith("cropped to 60% of the area")
    assert describe_edit(v, from_keeper=False).startswith("uncropped")


def test_a_resized_turned_reencode_is_the_same_pixels(tmp_path, checker, photo):
    im = Image.open(photo).convert("RGB")
    small = im.resize((im.width // 3, im.height // 3), Image.Resampling.BILINEAR)
    copy = _save(orient_pixels(np.asarray(small), 5), tmp_path / "turned.jpg", quality=35)
    v = checker.verify(str(photo), copy, orient=5)
    assert v.verified and v.method == "pixels", v
    assert v.scale == pytest.approx(1 / 3, abs=0.02)
    assert describe_edit(v) == "scaled 0.33×"
    # the wrong orientation is no proof of the same pixels: the keypoints decide
    assert checker.verify(str(photo), copy, orient=6).method == "keypoints"


def test_a_local_blur_is_an_edit_not_another_capture(tmp_path, checker, photos):
    rng = np.random.default_rng(3)
    src = sorted((photos / "images").iterdir())[40]
    copy = provenance.make_copy(src, tmp_path / "blurred", "local_blur", rng)
    v = checker.verify(str(src), str(copy))
    assert v.verified, v
    assert "blurred over" in describe_edit(v)


def test_frames_of_a_moving_scene_are_two_captures(tmp_path, checker, photos):
    srcs = sorted((photos / "images").iterdir())
    rng = np.random.default_rng(11)
    refused = 0
    for k in range(4):
        frames = provenance.clip_frames(srcs[60 + k], [srcs[80 + k], srcs[90 + k]], rng)
        a, b = (_save(np.asarray(f), tmp_path / f"f{k}_{i}.jpg") for i, f in enumerate(frames))
        v = checker.verify(a, b)
        refused += not v.verified
        assert v.reason if not v.verified else True
    assert refused == 4


def test_unrelated_photos_and_missing_files_are_not_copies(tmp_path, checker, photos):
    srcs = sorted((photos / "images").iterdir())
    assert not checker.verify(str(srcs[1]), str(srcs[2])).verified
    v = checker.verify(str(srcs[1]), str(tmp_path / "gone.jpg"))
    assert not v.verified and v.reason == "not checked: the file is gone"


def test_the_pool_returns_verdicts_in_order(tmp_path, photos):
    srcs = [str(p) for p in sorted((photos / "images").iterdir())[:6]]
    pairs = [(srcs[0], srcs[0], 0), (srcs[1], srcs[2], -1), (srcs[3], srcs[3], -1),
             (srcs[4], str(tmp_path / "none.jpg"), -1)] * 5
    seen = []
    out = verify_pairs(pairs, 2, lambda done, total: seen.append((done, total)))
    assert [v.verified for v in out] == [True, False, True, False] * 5
    assert seen[-1] == (20, 20)


def test_candidates_are_capped_per_file_never_dense():
    rng = np.random.default_rng(0)
    n = 300
    a, b = np.triu_indices(n, 1)                    # every pair: a dense cluster
    score = rng.random(len(a))
    ka, kb, ks = cap_per_node(a, b, score, 4)
    assert len(ka) <= n * 4
    for node in (0, 17, 299):                       # each file keeps its 4 best at least
        mine = (a == node) | (b == node)
        best = np.sort(score[mine])[-4:]
        kept = ks[(ka == node) | (kb == node)]
        assert set(best.tolist()) <= set(kept.tolist())
    same = cap_per_node(a, b, score, None)
    assert len(same[0]) == len(a)


def test_duplicates_tiers_copies_by_their_check_and_gives_evidence(tmp_path, photos):
    srcs = sorted((photos / "images").iterdir())
    media = tmp_path / "m"
    media.mkdir()
    rng = np.random.default_rng(4)
    for s in srcs[100:104]:
        shutil.copy2(s, media / s.name)
    provenance.make_copy(srcs[100], media / "offcentre", "offcentre", rng)
    provenance.make_copy(srcs[101], media / "turned", "crop_turn", rng)
    frames = provenance.clip_frames(srcs[102], [srcs[110], srcs[111]], rng)
    for i, f in enumerate(frames):
        f.save(media / f"frame{i}.jpg", quality=90)
    api = open_index(tmp_path / "db")
    api.index([media])
    res = api.duplicates()
    members = {Path(f.path).name: f for g in res.groups for f in g.files if f.path != g.keeper}
    copies = {n: f for n, f in members.items() if n.startswith(("offcentre", "turned"))
              or n in (srcs[100].name, srcs[101].name)}
    assert len(copies) == 2, members
    for f in copies.values():
        assert f.tier == "edited" and f.evidence["verified"] and f.evidence["inliers"] >= 25
        assert "cropped" in f.edit or "uncropped" in f.edit
    assert not any(n.startswith("frame") for n in members)     # look-alikes are not copies
    looser = api.duplicates(tiers="exact,near,edited,similar")
    frame_tiers = {f.tier for g in looser.groups for f in g.files
                   if Path(f.path).name.startswith("frame") and f.path != g.keeper}
    assert frame_tiers <= {"similar"}
    # the evidence reaches the JSON and the CSV
    code, out, _ = run_cli("duplicates", "--db", tmp_path / "db", "--json")
    assert code == 0
    files = [f for g in json.loads(out)["groups"] for f in g["files"] if f["tier"]]
    assert all(f["evidence"]["verified"] and f["edit"] for f in files)
    code, out, _ = run_cli("duplicates", "--db", tmp_path / "db", "--csv")
    rows = list(csv.DictReader(out.splitlines()))
    assert {"edit", "verified", "inliers", "residual"} <= set(rows[0])
    assert all(r["verified"] == "1" for r in rows if r["tier"])
