from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from alice_gpu.decode import DecodePlan, decode_file, decode_files, jpeg
from alice_gpu.decode.pillow import ALLOWED_FORMATS
from alice_gpu.discover import walk
from alice_gpu.records import STATUS_FAILED, STATUS_OK, FileEntry

WS = 64
RGB = DecodePlan(WS)


def _entry(path) -> FileEntry:
    st = path.stat()
    return FileEntry(str(path), st.st_size, st.st_mtime_ns)


def _gradient(w=80, h=60) -> np.ndarray:
    x = np.linspace(0, 255, w)[None, :, None]
    y = np.linspace(0, 255, h)[:, None, None]
    return np.concatenate([np.broadcast_to(x, (h, w, 1)), np.broadcast_to(y, (h, w, 1)),
                           np.full((h, w, 1), 128.0)], axis=2).astype(np.uint8)


def _save(tmp_path, name, im: Image.Image, **kw):
    path = tmp_path / name
    im.save(path, **kw)
    return path


def test_output_is_fixed_size_uint8_rgb(tmp_path):
    d = decode_file(_entry(_save(tmp_path, "g.png", Image.fromarray(_gradient()))), RGB)
    assert d.status == STATUS_OK and d.error is None
    assert d.pixels.shape == (WS, WS, 3) and d.pixels.dtype == np.uint8
    assert (d.width, d.height, d.format) == (80, 60, "PNG")


@pytest.mark.parametrize("fmt", ["png", "jpg"])       # jpg: the libjpeg-turbo fast path
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(tmp_path, orientation, fmt):
    # a picture whose top-left quadrant is white; stored transformed, tagged with its orientation
    upright = np.zeros((40, 60, 3), np.uint8)
    upright[:20, :30] = 255
    im = Image.fromarray(upright)
    inverse = {1: None, 2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
               4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
               6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
               8: Image.Transpose.ROTATE_270}[orientation]
    stored = im.transpose(inverse) if inverse is not None else im
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = _save(tmp_path, f"o{orientation}.{fmt}", stored, exif=exif.tobytes())
    if fmt == "jpg":
        assert jpeg.probe(path.read_bytes()).orientation == orientation
    d = decode_file(_entry(path), DecodePlan(32))
    assert d.status == STATUS_OK
    assert (d.width, d.height) == (60, 40)
    px = d.pixels.mean(axis=2)
    assert px[:12, :12].mean() > 200 and px[20:, 20:].mean() < 50


def test_modes_convert_to_rgb(tmp_path):
    g = _gradient()
    cases = {
        "cmyk.jpg": (Image.fromarray(g).convert("CMYK"), {}),
        "la.png": (Image.fromarray(g[..., 0]).convert("LA"), {}),
        "p_alpha.png": (Image.fromarray(g).convert("P"), {"transparency": 0}),
        "bw.png": (Image.fromarray(g[..., 0]).convert("1"), {}),
    }
    for name, (im, kw) in cases.items():
        d = decode_file(_entry(_save(tmp_path, name, im, **kw)), RGB)
        assert d.status == STATUS_OK, (name, d.error)
        assert d.pixels.shape == (WS, WS, 3)


def test_16bit_gray_is_scaled_not_clipped(tmp_path):
    arr = np.tile(np.linspace(0, 65535, 64, dtype=np.uint16), (64, 1))
    path = _save(tmp_path, "g16.png", Image.fromarray(arr))
    d = decode_file(_entry(path), DecodePlan(64))
    assert d.status == STATUS_OK
    row = d.pixels[32, :, 0].astype(int)
    assert row[0] < 10 and row[-1] > 245 and 100 < row[32] < 160   # clipping would give 255s


def test_animated_gif_uses_first_frame(tmp_path):
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50)
    d = decode_file(_entry(path), DecodePlan(16))
    assert d.status == STATUS_OK
    r, g, b = d.pixels.reshape(-1, 3).mean(axis=0)
    assert r > 200 and b < 50


@pytest.mark.parametrize("name, data", [
    ("empty.jpg", b""),
    ("text.jpg", b"this is not an image at all"),
])
def test_bad_bytes_become_records(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    d = decode_file(_entry(path), RGB)
    assert d.status == STATUS_FAILED and d.pixels is None
    assert d.error and "\n" not in d.error


def test_truncated_jpeg_is_a_failure_not_a_crash(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(_gradient(400, 300)).save(buf, "JPEG", quality=90)
    path = tmp_path / "trunc.jpg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    d = decode_file(_entry(path), RGB)
    assert d.status == STATUS_FAILED and "truncated" in d.error.lower()


def test_vanished_file_is_a_record(tmp_path):
    d = decode_file(FileEntry(str(tmp_path / "gone.jpg"), 10, 10), RGB)
    assert d.status == STATUS_FAILED and "FileNotFoundError" in d.error


def test_a_file_rewritten_between_listing_and_reading_is_stored_as_read(tmp_path):
    """The record carries the size and mtime of the bytes actually decoded, so the next
    run sees exactly what was indexed (and re-reads the file only if it changes again)."""
    import os

    path = _save(tmp_path, "a.png", Image.new("RGB", (40, 30), (255, 0, 0)))
    listed = _entry(path)
    Image.new("RGB", (50, 20), (0, 0, 255)).save(path)          # rewritten after the listing
    os.utime(path, ns=(listed.mtime_ns + 10**9, listed.mtime_ns + 10**9))
    d = decode_file(listed, RGB)
    st = path.stat()
    assert d.status == STATUS_OK and (d.width, d.height) == (50, 20)
    assert (d.size, d.mtime_ns) == (st.st_size, st.st_mtime_ns) != (listed.size, listed.mtime_ns)
    assert d.pixels[..., 2].min() > 200                         # the new picture


def test_formats_outside_the_allowlist_are_refused(tmp_path):
    assert "EPS" not in ALLOWED_FORMATS and "PDF" not in ALLOWED_FORMATS
    path = tmp_path / "x.jpg"
    Image.fromarray(_gradient()).save(path, "PDF")
    assert decode_file(_entry(path), RGB).status == STATUS_FAILED


def test_every_odd_file_gives_one_record(odd_files):
    entries = list(walk([odd_files]))
    assert len(entries) >= 50
    results = decode_files(entries, RGB)
    assert [r.path for r in results] == [e.path for e in entries]
    by_name = {r.path.split("odd_files/")[1]: r for r in results}
    for name in ("sd-parsers/empty_file.png", "pillow/broken.png",
                 "pillow/decompression_bomb.gif", "imagededup/ukbench09268_corrupt.jpg"):
        assert by_name[name].status == STATUS_FAILED, name
    for name in ("pillow/pil_sample_cmyk.jpg", "libpng/basn6a16.png", "pillow/iss634.gif",
                 "pillow/p_trns_single.png", "imagededup/ukbench09380.png",
                 "dataset-tools/Comfyui_00491_.jpg", "pillow/invalid-exif.jpg",
                 "pillow/junk_jpeg_header.jpg", "pillow/i_trns.png", "pillow/tiff_16bit_RGB.tiff",
                 "pillow/frozenpond.mpo", "pillow/hopper_orientation_6.jpg"):
        assert by_name[name].status == STATUS_OK, (name, by_name[name].error)
    assert all(r.pixels.shape == (WS, WS, 3) for r in results if r.status == STATUS_OK)


def _pillow_only(monkeypatch):
    monkeypatch.setattr(jpeg, "probe", lambda data: None)


@pytest.mark.slow
def test_jpeg_fast_path_is_bit_identical_to_pillow(photos, near_dups, odd_files, monkeypatch):
    """Every file of the shared sets, hash-only (luma, DCT 1/2) and full (RGB) decodes:
    the libjpeg-turbo path gives Pillow's pixels, size, format and verdict exactly."""
    files = sorted(p for root in (photos, near_dups, odd_files) for p in root.rglob("*")
                   if p.is_file() and p.suffix.lower() not in (".md", ".csv"))
    fast_used = 0
    for mode, size, draft in (("L", 64, 128), ("RGB", 256, None)):
        plan = DecodePlan(size, mode, draft_size=draft)
        fast = [decode_file(_entry(p), plan) for p in files]
        fast_used += sum(jpeg.probe(p.read_bytes()) is not None for p in files)
        with monkeypatch.context() as m:
            _pillow_only(m)
            slow = [decode_file(_entry(p), plan) for p in files]
        for a, b in zip(fast, slow):
            assert (a.status, a.format, a.width, a.height) == (b.status, b.format, b.width, b.height), a.path
            if a.status == STATUS_OK:
                assert np.array_equal(a.pixels, b.pixels), a.path
    assert fast_used >= 2 * 500     # the photos and UKBench views are plain JPEGs


def test_probe_matches_pillow_metadata_on_real_jpegs(photos, odd_files):
    for p in [*sorted((photos / "images").iterdir())[:60], *sorted(odd_files.rglob("*.jp*g"))]:
        info = jpeg.probe(p.read_bytes())
        if info is None:
            continue
        with Image.open(p) as im:
            assert (im.format, im.size, im.mode, im.getexif().get(0x0112, 1)) == (
                "JPEG", (info.width, info.height), info.mode, info.orientation), p


def _jpeg_bytes(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", **kw)
    return buf.getvalue()


def test_unusual_jpegs_are_left_to_pillow(tmp_path, monkeypatch):
    rgb = Image.fromarray(_gradient(160, 120))
    assert jpeg.probe(_jpeg_bytes(rgb)) is not None
    assert jpeg.probe(_jpeg_bytes(rgb.convert("CMYK"))) is None          # CMYK
    assert jpeg.probe(b"\x89PNG\r\n\x1a\n" + b"0" * 100) is None          # not a JPEG
    plain = _jpeg_bytes(rgb)
    xmp = (b"\xff\xe1" + (len(b"http://ns.adobe.com/xap/1.0/\x00") + 2 + 40).to_bytes(2, "big")
           + b"http://ns.adobe.com/xap/1.0/\x00" + b' tiff:Orientation="6" '.ljust(40))
    assert jpeg.probe(plain[:2] + xmp + plain[2:]) is None               # orientation via XMP
    junk = b"\xff\xe1\x00\x10Exif\x00\x00JUNKJUNK"                      # EXIF that is not TIFF
    mangled = plain[:2] + junk + plain[2:]
    assert jpeg.probe(mangled) is None
    path = tmp_path / "junk-exif.jpg"
    path.write_bytes(mangled)
    d = decode_file(_entry(path), RGB)                                  # Pillow decides
    assert d.status == STATUS_OK and (d.width, d.height, d.format) == (160, 120, "JPEG")
    mpo = tmp_path / "two.mpo"
    rgb.save(mpo, "MPO", save_all=True, append_images=[rgb.rotate(90)])
    assert jpeg.probe(mpo.read_bytes()) is None
    assert decode_file(_entry(mpo), RGB).format == "MPO"
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 160 * 120 - 1)       # over the pixel limit
    assert jpeg.probe(plain) is None


def test_truncated_jpeg_fails_on_the_fast_path_as_with_pillow(tmp_path, photos, monkeypatch):
    src = sorted((photos / "images").iterdir())[0].read_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(src[: len(src) // 2])
    luma = DecodePlan(WS, "L", draft_size=128)
    fast = decode_file(_entry(path), luma)
    _pillow_only(monkeypatch)
    slow = decode_file(_entry(path), luma)
    assert fast.status == slow.status == STATUS_FAILED and "truncated" in slow.error


_PEAK = """
import io, os, resource, sys
import numpy as np
from PIL import Image
from alice_gpu.decode import DecodePlan, decode_file
from alice_gpu.records import FileEntry
small = sys.argv[1] + ".small.png"
Image.new("RGBA", (64, 64)).save(small)
decode_file(FileEntry(small, os.path.getsize(small), 0), DecodePlan(256))          # warm up
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
d = decode_file(FileEntry(sys.argv[1], os.path.getsize(sys.argv[1]), 0), DecodePlan(256))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(d.status, (peak - base) / 1024)
"""


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["RGBA", "I;16"])
def test_huge_png_is_decoded_in_about_one_frame_of_memory(tmp_path, mode):
    """No DCT draft for PNG: the frame is box-reduced strip by strip before any
    conversion, so the peak stays near one decoded frame (it was ~5 frames for RGBA)."""
    import subprocess
    import sys

    from alice_gpu.decode.pillow import finish, shrink

    w, h = 6000, 4000                                       # 24 MP, over the 16.7 MP mark
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None]
    if mode == "RGBA":
        arr = np.dstack([((x + y) / 2).astype(np.uint8), np.broadcast_to(x, (h, w)).astype(np.uint8),
                         np.broadcast_to(y, (h, w)).astype(np.uint8), np.full((h, w), 180, np.uint8)])
        frame_mb = w * h * 4 / 2**20
    else:
        arr = (((x + y) / 2) * 257).astype(np.uint16)
        frame_mb = w * h * 2 / 2**20
    path = tmp_path / "huge.png"
    Image.fromarray(arr).save(path, compress_level=1)
    del arr
    res = subprocess.run([sys.executable, "-c", _PEAK, str(path)], capture_output=True, text=True,
                         timeout=300)
    status, grew = res.stdout.split()
    assert status == STATUS_OK, res.stderr[-2000:]
    assert float(grew) < 1.5 * frame_mb + 40, (grew, frame_mb)
    with Image.open(path) as im:                           # and the picture is the same
        im.load()
        shrunk = finish(shrink(im, 256), 1, "RGB", 256).astype(int)
        full = finish(im, 1, "RGB", 256).astype(int)
    assert np.abs(shrunk - full).mean() < 1.5


def test_records_cross_process_boundaries_whole():
    """FileEntry and Decoded pickle as plain tuples (speed): every field must survive."""
    import dataclasses
    import pickle

    from alice_gpu.records import Decoded

    values = {f.name: f"v-{f.name}" for f in dataclasses.fields(Decoded)}
    back = pickle.loads(pickle.dumps(Decoded(**values)))
    assert dataclasses.asdict(back) == values
    entry = FileEntry("/a/b.jpg", 10, 20)
    assert pickle.loads(pickle.dumps(entry)) == entry
