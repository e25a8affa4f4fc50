"""Decisions about duplicate groups persist in the index: "not duplicates" and a keeper
chosen by hand are honoured by every later `duplicates`, until a file in them changes."""

from __future__ import annotations

import json
import os
import shutil

from PIL import Image

from alice_gpu import open_index
from conftest import run_cli


def _library(tmp_path, photos):
    media = tmp_path / "media"
    media.mkdir()
    srcs = sorted((photos / "images").iterdir())[10:16]
    for src in srcs:
        shutil.copy2(src, media / src.name)
    shutil.copy2(srcs[0], media / "copy-a.jpg")                    # an exact copy
    Image.open(srcs[1]).convert("RGB").resize((200, 150)).save(media / "small-b.jpg")
    return media


def _groups(db) -> list[set[str]]:
    code, out, err = run_cli("duplicates", "--db", db, "--json")
    assert code == 0, err
    return [{os.path.basename(f["path"]) for f in g["files"]} for g in json.loads(out)["groups"]]


def test_not_duplicates_and_a_chosen_keeper_stick_until_a_file_changes(tmp_path, photos):
    media = _library(tmp_path, photos)
    db = tmp_path / "db"
    assert run_cli("index", media, "--db", db, "--no-embed")[0] == 0
    api = open_index(db)
    groups = api.duplicates().groups
    assert len(groups) == 2
    exact = next(g for g in groups if g.tier == "exact")
    near = next(g for g in groups if g.tier == "near")
    api.decide("not-duplicates", [f.id for f in exact.files])
    other = next(f for f in near.files if f.path != near.keeper)
    api.decide("keeper", [f.id for f in near.files], keeper=other.id)

    remaining = open_index(db).duplicates().groups                   # a fresh process's view
    assert len(remaining) == 1 and remaining[0].keeper == other.path
    assert remaining[0].keeper_reason == "chosen by hand"
    assert _groups(db) == [{os.path.basename(f.path) for f in near.files}]   # the CLI too
    assert [d["kind"] for d in api.decisions()] == ["keeper", "not-duplicates"]

    copy = media / "copy-a.jpg"                                      # a file changes...
    Image.open(copy).convert("RGB").save(copy, quality=95)
    assert run_cli("index", media, "--db", db, "--no-embed")[0] == 0
    assert len(_groups(db)) == 2                                     # ...its group is back
    assert any(f["changed"] for f in api.decisions()[1]["files"])


def test_a_decision_can_be_taken_back_and_bad_ones_are_refused(tmp_path, photos):
    import pytest

    from alice_gpu.errors import QueryError

    media = _library(tmp_path, photos)
    db = tmp_path / "db"
    run_cli("index", media, "--db", db, "--no-embed")
    api = open_index(db)
    group = next(g for g in api.duplicates().groups if g.tier == "exact")
    ids = [f.id for f in group.files]
    decision = api.decide("not-duplicates", ids)
    assert len(api.duplicates().groups) == 1
    assert api.forget_decision(decision) and len(api.duplicates().groups) == 2
    with pytest.raises(QueryError):
        api.decide("maybe", ids)
    with pytest.raises(QueryError):
        api.decide("keeper", ids, keeper=123456)
    with pytest.raises(QueryError):
        api.decide("not-duplicates", ids[:1])
