"""A query image outside the index is hashed the way the index's rows were made: a copy of
an indexed file finds its original at distance 0, on a hash-only index (64 px luma, block
means) and on an index with embeddings (the RGB working image)."""

from __future__ import annotations

import shutil

import pytest

from alice_gpu import open_index


@pytest.mark.parametrize("embed, n", [(False, 50), (True, 8)])
def test_a_copy_outside_the_index_finds_its_original_at_distance_0(tmp_path, photos, embed, n):
    media, outside = tmp_path / "media", tmp_path / "outside"
    media.mkdir()
    outside.mkdir()
    for src in sorted((photos / "images").iterdir())[:n]:
        shutil.copy2(src, media / src.name)
        shutil.copy2(src, outside / src.name)
    api = open_index(tmp_path / "db")
    summary = api.index([media], embed=embed)
    assert summary.decoded == n
    for copy in sorted(outside.iterdir()):
        result = api.similar(copy, k=3, by="phash")
        assert not result.query_in_index
        best = result.results[0]
        assert best.path == str(media / copy.name) and best.distance == 0, (copy.name, best)


def test_a_hash_query_on_a_hash_only_index_needs_no_torch(tmp_path, photos):
    import subprocess
    import sys

    media = tmp_path / "media"
    media.mkdir()
    for src in sorted((photos / "images").iterdir())[:5]:
        shutil.copy2(src, media / src.name)
    outside = tmp_path / "q.jpg"
    shutil.copy2(sorted((photos / "images").iterdir())[0], outside)
    code = ("import sys\nfrom alice_gpu import open_index\n"
            "api = open_index(sys.argv[1])\napi.index([sys.argv[2]], embed=False)\n"
            "r = api.similar(sys.argv[3], by='phash')\n"
            "assert r.results[0].distance == 0\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "db"), str(media),
                           str(outside)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
