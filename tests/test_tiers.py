"""Duplicates' tiered answer: held-out quality on generated transform sets, the tiers,
rotated and mirrored copies named, and the pairs' bookkeeping."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

import heldout
from alice_gpu import open_index
from alice_gpu.records import ORIENT_INVERSE, ORIENTATIONS
from alice_gpu.search.edges import EDITED, EXACT, NEAR, Edges
from conftest import run_cli

ROTATIONS = {"rotated 90°", "rotated 180°", "rotated 270°"}


@pytest.fixture(scope="module")
def heldout_run(tmp_path_factory, photos):
    """The held-out half (never used to tune the defaults), indexed and evaluated."""
    root = tmp_path_factory.mktemp("heldout")
    truth = heldout.build(photos, root / "set", half=1, per_transform=12, seed=2)
    api = open_index(root / "db")
    evaluation = api.evaluate(truth)
    return root, truth, api, evaluation


def test_default_duplicates_reach_precision_and_recall_on_held_out_transforms(heldout_run):
    _, _, _, ev = heldout_run
    dup = ev.duplicates
    assert dup["by"] == "tiered"
    assert dup["true_pairs"] == 12 * len(heldout.TRANSFORMS)
    assert dup["precision"] >= 0.98 and dup["recall"] >= 0.95, dup
    assert set(ev.per_transform) == set(heldout.TRANSFORMS)
    for name, fig in ev.per_transform.items():
        assert fig["duplicates"]["true_pairs"] == 12
        assert fig["duplicates"]["recall"] >= 0.75, (name, fig["duplicates"])


def test_rotated_and_mirrored_copies_are_named(heldout_run):
    root, truth, api, _ = heldout_run
    import csv

    kind = {str((root / "set" / r["file"]).resolve()): r["transform"]
            for r in csv.DictReader(open(truth))}
    named = {"rotate90": 0, "mirror": 0}
    for group in api.duplicates().groups:
        for f in group.files:
            if f.path == group.keeper:
                continue
            made = kind.get(f.path) or kind.get(group.keeper)
            if made == "rotate90":
                assert f.transform in ROTATIONS, (f.path, f.transform)
                named["rotate90"] += 1
            elif made == "mirror":
                assert f.transform == "mirrored", (f.path, f.transform)
                named["mirror"] += 1
            elif made in ("downscale", "jpeg20", "grayscale", "squash"):
                assert f.transform == ""
    assert named["rotate90"] >= 11 and named["mirror"] >= 11


@pytest.mark.parametrize("op, name", [(Image.Transpose.ROTATE_270, "rotated 90°"),
                                      (Image.Transpose.ROTATE_180, "rotated 180°"),
                                      (Image.Transpose.ROTATE_90, "rotated 270°"),
                                      (Image.Transpose.FLIP_LEFT_RIGHT, "mirrored"),
                                      (Image.Transpose.FLIP_TOP_BOTTOM, "flipped vertically"),
                                      (Image.Transpose.TRANSPOSE, "mirrored, rotated 270°")])
def test_each_orientation_is_found_and_named_relative_to_the_keeper(tmp_path, photos, op, name):
    src = sorted((photos / "images").iterdir())[5]
    media = tmp_path / "m"
    media.mkdir()
    shutil.copy2(src, media / "original.jpg")
    im = Image.open(src).convert("RGB")
    # the copy is smaller, so the original (more pixels at equal count? same: then size) is kept
    im.transpose(op).save(media / "copy.jpg", quality=70)
    code, _, _ = run_cli("index", media, "--db", tmp_path / "db", "--no-embed")
    assert code == 0
    code, out, _ = run_cli("duplicates", "--db", tmp_path / "db", "--json")
    group, = json.loads(out)["groups"]
    member, = [f for f in group["files"] if f["path"] != group["keeper"]]
    assert group["keeper"].endswith("original.jpg")        # same pixels, larger file
    assert member["tier"] == "near" and member["transform"] == name
    assert group["transform"] == [name]
    # the answer without orientations misses it (or finds it as is, for symmetric pictures)
    code, out, _ = run_cli("duplicates", "--db", tmp_path / "db", "--by", "dhash", "--json")
    assert not json.loads(out)["groups"]


def test_tiers_exact_near_edited_and_similar_only_when_asked(tmp_path, photos):
    srcs = sorted((photos / "images").iterdir())[10:14]
    media = tmp_path / "m"
    media.mkdir()
    for s in srcs:
        shutil.copy2(s, media / s.name)
    shutil.copy2(srcs[0], media / "same_bytes.jpg")                         # exact
    Image.open(srcs[1]).convert("RGB").save(media / "reencoded.jpg", quality=30)   # near
    im = Image.open(srcs[2]).convert("RGB")
    w, h = im.size
    im.crop((int(w * .1), int(h * .1), w, h)).save(media / "cropped.jpg", quality=90)  # edited
    api = open_index(tmp_path / "db")
    api.index([media])
    res = api.duplicates()
    tiers = {f.path.rsplit("/", 1)[1]: f.tier for g in res.groups for f in g.files
             if f.path != g.keeper}
    assert tiers.get("same_bytes.jpg", tiers.get(srcs[0].name)) == "exact"
    assert tiers.get("reencoded.jpg", tiers.get(srcs[1].name)) == "near"
    assert tiers.get("cropped.jpg", tiers.get(srcs[2].name)) == "edited"
    assert all(g.tier in ("exact", "near", "edited") for g in res.groups)
    for g in res.groups:                      # a group's tier is its weakest member's
        worst = max(("exact", "near", "edited").index(f.tier) for f in g.files if f.tier)
        assert g.tier == ("exact", "near", "edited")[worst]
        assert g.score == min(f.score for f in g.files if f.tier == g.tier)
    only_exact = api.duplicates(tiers="exact")
    assert [g.tier for g in only_exact.groups] == ["exact"]
    looser = api.duplicates(tiers="exact,near,edited,similar")
    assert sum(len(g.files) for g in looser.groups) >= sum(len(g.files) for g in res.groups)


def test_edges_keep_the_strongest_tier_and_turn_orientations_with_the_pair():
    def edges(a, b, tier, score, orient):
        n = len(a)
        return Edges(np.asarray(a, np.int64), np.asarray(b, np.int64),
                     np.full(n, tier, np.int8), np.asarray(score, float), np.zeros(n, np.int64),
                     np.asarray(orient, np.int8))

    rot90 = [n for n, *_ in ORIENTATIONS].index("rotated 90°")
    best = Edges.best_of([edges([5, 1], [2, 3], EDITED, [0.9, 0.95], [0, 0]),
                          edges([2], [5], NEAR, [0.97], [rot90]),      # 5 ≈ rot90(2)
                          edges([1], [3], EXACT, [1.0], [0])])
    assert best.a.tolist() == [1, 2] and best.b.tolist() == [3, 5]
    assert best.tier.tolist() == [EXACT, NEAR]
    assert best.orient.tolist() == [0, rot90]
    swapped = Edges.best_of([edges([5], [2], NEAR, [0.97], [rot90])])   # 2 ≈ rot90(5)
    assert swapped.orient.tolist() == [ORIENT_INVERSE[rot90]]
    assert ORIENTATIONS[ORIENT_INVERSE[rot90]][0] == "rotated 270°"
    assert best.find(5, 2) == 1 and best.find(1, 3) == 0
    with pytest.raises(KeyError):
        best.find(1, 2)
