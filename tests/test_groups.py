"""Duplicate groups never chain: every two files of a group are within the threshold."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from alice_gpu.config import load_config
from alice_gpu.records import AssetRecord
from alice_gpu.search.groups import linked_groups
from alice_gpu.search.queries import duplicates
from alice_gpu.search.vectors import VectorIndex
from alice_gpu.store import Store


def _store_with(tmp_path, hashes: dict[str, int], pixels: dict[str, int]) -> Store:
    store = Store(tmp_path / "idx", model="test", dim=4)
    store.write_batch([AssetRecord(f"/m/{name}.jpg", 1000, 1, "ok", width=pixels[name], height=10,
                                   format="JPEG", id=k + 1,
                                   hashes={"ahash": 0, "dhash": 0, "phash": h, "whash": 0})
                       for k, (name, h) in enumerate(hashes.items())])
    return store


@pytest.mark.parametrize("best", ["A", "B", "C"])
def test_a_near_b_near_c_never_puts_a_and_c_together(tmp_path, best):
    six, twelve = (1 << 6) - 1, (1 << 12) - 1        # A~B: 6 bits, B~C: 6 bits, A~C: 12 bits
    hashes = {"A": 0, "B": six, "C": twelve}
    pixels = {n: (200 if n == best else 100 + k) for k, n in enumerate("ABC")}
    with _store_with(tmp_path, hashes, pixels) as store:
        cfg = load_config(None)
        first = duplicates(store, VectorIndex(store), by="phash", threshold=10, cfg=cfg)
        again = duplicates(store, VectorIndex(store), by="phash", threshold=10, cfg=cfg)
    assert first == again                                           # deterministic
    for group in first.groups:
        paths = {f.path for f in group.files}
        assert not {"/m/A.jpg", "/m/C.jpg"} <= paths
        assert group.keeper == f"/m/{best}.jpg" or f"/m/{best}.jpg" not in paths
        assert group.keeper_reason.startswith("most pixels")
        assert group.weakest.distance == 6 and group.weakest.score == 1 - 6 / 64
    assert len(first.groups) == 1 and len(first.groups[0].files) == 2


def test_linked_groups_are_cliques_led_by_their_best_ranked_member():
    rng = np.random.default_rng(4)
    n = 300
    pts = rng.uniform(0, 30, (n, 2))
    i, j = np.triu_indices(n, 1)
    dist = np.hypot(*(pts[i] - pts[j]).T)
    near = dist <= 2.0
    a, b, close = i[near] + 1000, j[near] + 1000, -dist[near]
    rank = rng.permutation(n)                                       # node id 1000 + k
    groups = linked_groups(a, b, close, lambda ids: rank[ids - 1000])
    edges = set(zip(a.tolist(), b.tolist()))
    seen: set[int] = set()
    assert groups
    for members, pairs in groups:
        ids = members.tolist()
        assert not seen & set(ids)
        seen |= set(ids)
        assert rank[ids[0] - 1000] == min(rank[x - 1000] for x in ids)     # the keeper
        for x, y in itertools.combinations(sorted(ids), 2):
            assert (x, y) in edges                                  # complete linkage
        assert len(pairs) == len(ids) * (len(ids) - 1) // 2
    assert linked_groups(np.zeros(0), np.zeros(0), np.zeros(0), lambda ids: ids) == []


def _two_copies(tmp_path):
    """One picture twice: a big old JPEG in /m/a and a small new PNG in /m/originals."""
    store = Store(tmp_path / "idx", model="test", dim=4)
    common = {"ahash": 0, "dhash": 0, "phash": 7, "whash": 0}
    store.write_batch([
        AssetRecord("/m/a/big.jpg", 5000, 100, "ok", width=400, height=300, format="JPEG", id=1,
                    hashes=common),
        AssetRecord("/m/originals/small.png", 9000, 200, "ok", width=200, height=150,
                    format="PNG", id=2, hashes=common)])
    return store


@pytest.mark.parametrize("keep, keeper, reason", [
    (None, "/m/a/big.jpg", "most pixels (400x300 against 200x150)"),
    ("size", "/m/originals/small.png", "largest file (9000 against 5000 bytes)"),
    ("newest,pixels", "/m/originals/small.png", "newest (modified last)"),
    ("format:png>jpg", "/m/originals/small.png", "preferred format (PNG before JPEG)"),
    ("format:jpeg>png,size", "/m/a/big.jpg", "preferred format (JPEG before PNG)"),
    ("path:/m/originals,pixels", "/m/originals/small.png", "under /m/originals"),
    ("oldest", "/m/a/big.jpg", "oldest (modified first)"),
])
def test_keep_rules_pick_the_keeper_and_say_why(tmp_path, keep, keeper, reason):
    with _two_copies(tmp_path) as store:
        res = duplicates(store, VectorIndex(store), by="phash", threshold=10,
                         cfg=load_config(None), keep=keep)
    (group,) = res.groups
    assert (group.keeper, group.keeper_reason) == (keeper, reason)


def test_an_unknown_keep_rule_is_a_usage_error(tmp_path):
    from conftest import run_cli

    code, out, err = run_cli("duplicates", "--keep", "pixels,biggest", "--db", tmp_path / "x")
    assert code == 2 and "unknown --keep rule 'biggest'" in err and err.count("\n") == 1


def test_csv_output_has_the_json_groups_and_survives_awkward_names(tmp_path):
    import csv
    import io
    import json

    from conftest import run_cli

    common = {"ahash": 0, "dhash": 0, "phash": 7, "whash": 0}
    names = ['/m/a, "quoted".jpg', "/m/b\nnewline.jpg", "/m/c.jpg"]
    with Store(tmp_path / "idx", model="efficientnet_lite0", dim=1280) as store:
        store.write_batch([AssetRecord(p, 100 + k, k, "ok", width=10 + k, height=10,
                                       format="JPEG", id=k + 1, hashes=common)
                           for k, p in enumerate(names)])
    # the rows have no files to check (query.verify would leave them unchecked): the
    # answer from the hashes alone
    (tmp_path / "signals.yaml").write_text("query:\n  verify: false\n")
    unchecked = ("--config", tmp_path / "signals.yaml")
    code, out, err = run_cli("duplicates", "--db", tmp_path / "idx", "--csv", *unchecked)
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out, newline="")))
    code, doc, _ = run_cli("duplicates", "--db", tmp_path / "idx", "--json", *unchecked)
    group = json.loads(doc)["groups"][0]
    assert [r["path"] for r in rows] == [f["path"] for f in group["files"]]
    assert [r["path"] for r in rows if r["keep"] == "1"] == [group["keeper"]] == ["/m/c.jpg"]
    code, _, err = run_cli("duplicates", "--db", tmp_path / "idx", "--csv", "--json")
    assert code == 2 and "--json" in err
