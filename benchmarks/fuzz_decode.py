"""Fuzz the decode-and-hash path with hypothesis: mutated real images must never crash or hang.

    pip install hypothesis
    python benchmarks/fuzz_decode.py [--seconds 300] [--write]

Inputs are real files from ../shared/data (JPEG, PNG, GIF, WebP, TIFF, BMP...) mutated by
hypothesis: bit flips, byte overwrites, truncation, splices of two files, duplicated or
deleted runs of bytes, and changes to header fields. Each input is written to a file and
run through the worker entry point (the libjpeg-turbo JPEG path or Pillow, EXIF, mode
conversion, huge-frame reduction, resize and the four
hashes). The contract: it returns exactly one record, status "ok" with a (S, S) image and
four 64-bit hashes, or status "failed" with a one-line reason; it never raises and never
runs longer than --timeout seconds. Not part of CI; the run is recorded in RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from alice_gpu.decode import DecodePlan  # noqa: E402
from alice_gpu.discover import walk  # noqa: E402
from alice_gpu.features.worker import decode_and_hash  # noqa: E402
from alice_gpu.records import FileEntry  # noqa: E402

DATA = REPO.parent / "shared" / "data"


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang()


def seeds(limit_bytes: int = 600_000) -> list[bytes]:
    files = [e.path for e in walk([DATA / "odd_files", DATA / "ai_generated", DATA / "near_duplicates"])
             if e.size <= limit_bytes]
    return [open(p, "rb").read() for p in sorted(files)]


SEEDS: list[bytes] = []
STATS: Counter = Counter()


def mutate(data: bytes, ops: list[tuple[int, int, int, bytes]], other: bytes) -> bytes:
    buf = bytearray(data)
    for kind, pos, n, blob in ops:
        if not buf:
            break
        p = pos % len(buf)
        if kind == 0:          # bit flip
            buf[p] ^= 1 << (n % 8)
        elif kind == 1:        # overwrite bytes
            buf[p:p + len(blob)] = blob
        elif kind == 2:        # truncate
            del buf[max(1, p):]
        elif kind == 3:        # splice another file in
            buf[p:] = other[n % max(1, len(other)):]
        elif kind == 4:        # duplicate a run
            buf[p:p] = buf[p:p + n % 4096]
        elif kind == 5:        # delete a run
            del buf[p:p + n % 4096]
        else:                  # header fields: poke big numbers near the start
            q = pos % min(len(buf), 64)
            buf[q:q + 4] = (0xFFFF0000 | n).to_bytes(4, "big")
    return bytes(buf)


op = st.tuples(st.integers(0, 6), st.integers(0, 2**31), st.integers(0, 2**16),
               st.binary(min_size=1, max_size=16))


def run(seconds: float, timeout: int, workdir: Path) -> None:
    deadline = time.monotonic() + seconds
    path = workdir / "input.bin"

    @settings(max_examples=500, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.integers(0, len(SEEDS) - 1), st.integers(0, len(SEEDS) - 1),
           st.lists(op, min_size=1, max_size=6), st.sampled_from([64, 128, 256]),
           st.sampled_from(["RGB", "L"]))
    def target(i, j, ops, size, mode):
        if time.monotonic() > deadline:
            return
        data = mutate(SEEDS[i], ops, SEEDS[j])
        path.write_bytes(data)
        signal.alarm(timeout)
        try:
            # the plans runs use: hash-only luma drafts at twice its size (most JPEGs: from
            # their 1/8-scale block means), full RGB at its size
            plan = DecodePlan(size, mode, hash_in_worker=True,
                              draft_size=2 * size if mode == "L" else None,
                              block_means=mode == "L")
            out = decode_and_hash([FileEntry(str(path), len(data), 0)], plan)
        except Hang:
            raise AssertionError(f"hang > {timeout}s on a mutation of seed {i}")
        finally:
            signal.alarm(0)
        assert len(out) == 1
        d = out[0]
        STATS["inputs"] += 1
        if d.status == "ok":
            STATS["ok"] += 1
            assert d.pixels is not None and d.pixels.shape[:2] == (size, size)
            assert set(d.hashes) == {"ahash", "dhash", "phash", "whash"}
            assert all(0 <= v < 2**64 for v in d.hashes.values())
        else:
            STATS["failed"] += 1
            assert d.status == "failed" and d.error and "\n" not in d.error
            STATS[d.error.split(":")[0]] += 1

    while time.monotonic() < deadline:
        target()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=300)
    ap.add_argument("--timeout", type=int, default=10, help="per-input limit before it is a hang")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    SEEDS.extend(seeds())
    signal.signal(signal.SIGALRM, _alarm)
    t = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        run(args.seconds, args.timeout, Path(tmp))
    elapsed = time.monotonic() - t
    reasons = ", ".join(f"{k} {v}" for k, v in STATS.most_common() if k not in ("inputs", "ok", "failed"))
    text = (f"## Fuzzing decode + hash (benchmarks/fuzz_decode.py, hypothesis), {dt.date.today()}\n\n"
            f"{elapsed:.0f} s, {STATS['inputs']:,} mutated inputs from {len(SEEDS)} real seed files "
            f"(per-input limit {args.timeout} s): no crash, no hang, no unexpected exception. "
            f"{STATS['ok']:,} decoded, {STATS['failed']:,} recorded as failed "
            f"({reasons or 'none'}).\n")
    print(text)
    if args.write:   # replaces the previous fuzzing record
        results = REPO / "benchmarks" / "RESULTS.md"
        old = results.read_text()
        old = re.sub(r"\n*## Fuzzing decode \+ hash[^\n]*\n\n[^\n]*\n", "\n", old)
        results.write_text(old.rstrip("\n") + "\n\n" + text)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
