"""The tools alice-gpu is timed against, each run as its own command by bench_throughput.py.

Kept minimal (no imports beyond what each tool needs) and run from cached
bytecode, so that the floor's start-up is as small as a user's script's:

    python -c "import peers; peers.main()" floor|imagehash|imagededup FOLDER WORKERS
"""

from __future__ import annotations

import sys
from pathlib import Path


def _floor_one(path: str) -> int:
    from PIL import Image

    with Image.open(path) as im:
        im.draft("L", (32, 32))
        return im.convert("L").resize((32, 32)).size[0]


def _imagehash_one(path: str) -> str:
    import imagehash
    from PIL import Image

    with Image.open(path) as im:
        return str(imagehash.phash(im))


def run(kind: str, folder: str, workers: int) -> None:
    files = sorted(str(p) for p in Path(folder).iterdir())
    if kind == "imagededup":
        from imagededup.methods import PHash

        enc = PHash(verbose=False).encode_images(image_dir=folder, num_enc_workers=workers)
        assert len(enc) == len(files)
        return
    from concurrent.futures import ProcessPoolExecutor

    fn = {"floor": _floor_one, "imagehash": _imagehash_one}[kind]
    with ProcessPoolExecutor(workers) as pool:
        out = list(pool.map(fn, files, chunksize=32))
    assert len(out) == len(files)


def main() -> None:
    run(sys.argv[1], sys.argv[2], int(sys.argv[3]))
