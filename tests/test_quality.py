"""The issue's quality bars on the real sets, through the Python API."""

from __future__ import annotations

import csv
import json
import os

import pytest

pytestmark = pytest.mark.slow   # the whole real sets, indexed with embeddings

import alice_gpu


@pytest.fixture(scope="module")
def mixed_index(tmp_path_factory, near_dups, photos):
    """near_duplicates + photo_collection together: the photos act as distractors."""
    idx = alice_gpu.open_index(tmp_path_factory.mktemp("mixed"))
    summary = idx.index([near_dups, photos / "images"], device="cpu")
    assert summary.failed == 0 and summary.decoded == summary.files_seen == 83 + 462
    return idx


def _groups(near_dups) -> dict[str, str]:
    rows = csv.DictReader(open(near_dups / "groups.csv"))
    return {os.path.normpath(near_dups / r["file"]): r["group"] for r in rows}


def _ns_score(idx, near_dups, by: str) -> float:
    """Mean number of same-group images in the top 4 (query included), over the 56 UKBench views."""
    group = _groups(near_dups)
    queries = sorted(p for p in group if f"{os.sep}ukbench{os.sep}" in p)
    assert len(queries) == 56
    hits = 0
    for q in queries:
        result = idx.similar(q, k=4, by=by)
        assert result.query_in_index
        hits += sum(group.get(m.path) == group[q] for m in result.results)
    return hits / len(queries)


def test_ns_score_by_embedding(mixed_index, near_dups):
    assert _ns_score(mixed_index, near_dups, "embedding") >= 3.8


def test_ns_score_by_embedding_holds_on_the_ivf_index(mixed_index, near_dups, monkeypatch):
    """The same bar when the 545 real vectors sit in the ANN index used above 20,000."""
    from alice_gpu.search import vectors

    folder = mixed_index.folder
    monkeypatch.setattr(vectors, "FLAT_MAX", 100)
    (folder / vectors.INDEX_FILE).unlink()
    try:
        ivf = alice_gpu.open_index(folder)
        score = _ns_score(ivf, near_dups, "embedding")
        assert json.loads((folder / vectors.SIDECAR_FILE).read_text())["kind"] == "ivf"
    finally:
        (folder / vectors.INDEX_FILE).unlink()      # the other tests get the flat one back
    print(f"embedding N-S score on IVF-SQ8: {score:.2f}")
    assert score >= 3.8


def test_ns_score_by_phash(mixed_index, near_dups):
    """pHash is not viewpoint-robust, but it finds more than the query itself (a score of
    1.0, what broken hashes would give): measured 1.95 (RESULTS.md)."""
    score = _ns_score(mixed_index, near_dups, "phash")
    print(f"pHash N-S score: {score:.2f}")
    assert score >= 1.8


def test_exif_orientations_form_one_duplicate_group(tmp_path, near_dups):
    idx = alice_gpu.open_index(tmp_path / "nd")
    idx.index([near_dups], embed=False)
    landscape = {str(near_dups / "exif_orientation_landscape" / f"Landscape_{i}.jpg")
                 for i in range(9)}
    groups = [{m.path for m in g.files} for g in idx.duplicates(by="phash").groups]
    assert landscape in groups
    # no photo of another group sneaks in with default thresholds
    group = _groups(near_dups)
    for g in groups:
        assert len({group[os.path.normpath(p)] for p in g}) == 1, g


def test_mixed_duplicates_do_not_merge_distractors(mixed_index, near_dups):
    group = _groups(near_dups)
    for g in mixed_index.duplicates(by="phash").groups:
        labels = {group.get(m.path, m.path) for m in g.files}
        assert len(labels) == 1, [m.path for m in g.files]
