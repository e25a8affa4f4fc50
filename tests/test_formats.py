"""Modern formats: HEIC/HEIF through pillow-heif, AVIF with its container's rotation,
mirror and crop, and failures with reasons a person understands."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from alice_gpu.decode import decode_path
from alice_gpu.discover import is_media
from alice_gpu.records import STATUS_FAILED, STATUS_OK
from conftest import shared

MODERN = shared("modern_formats")
BROKEN = {"heic/corrupted.heic": "HEIF image that cannot be read",
          "heic/empty.heic": "empty file (0 bytes)",
          # 10-bit with full-range alpha: libavif under Pillow 13 refuses it
          "avif/plum-blossom-large.profile0.10bpc.yuv420.alpha-full.avif":
              "AVIF image that cannot be read"}


def _files():
    return sorted(p for p in MODERN.rglob("*") if p.is_file() and p.suffix in
                  (".heic", ".hif", ".avif"))


@pytest.mark.parametrize("path", _files(), ids=lambda p: p.name)
def test_every_heic_heif_avif_that_opens_is_indexed_and_the_rest_say_why(path):
    rel = str(path.relative_to(MODERN))
    d = decode_path(str(path), 64)
    assert is_media(str(path))                               # .hif included
    if rel in BROKEN:
        assert d.status == STATUS_FAILED and d.error.startswith(BROKEN[rel]), d.error
        assert "object at 0x" not in d.error and "BytesIO" not in d.error
    else:
        assert d.status == STATUS_OK, d.error
        assert d.format in ("HEIF", "AVIF") and d.pixels.shape == (64, 64, 3)


def _pixels(name: str, size: int = 128) -> np.ndarray:
    d = decode_path(str(MODERN / "avif" / name), size)
    assert d.status == STATUS_OK, d.error
    return d.pixels.astype(np.int16)


def _reference(name: str, op=None, box=None, size: int = 128) -> np.ndarray:
    im = Image.open(MODERN / "avif" / name).convert("RGB")
    if box is not None:
        im = im.crop(box)
    if op is not None:
        im = im.transpose(op)
    return np.asarray(im.resize((size, size), Image.Resampling.LANCZOS), np.int16)


T = Image.Transpose


@pytest.mark.parametrize("name, ref, op", [
    ("kimono.avif", "kimono.png", None),
    ("kimono.rotate90.avif", "kimono.rotate90.png", None),
    ("kimono.rotate270.avif", "kimono.png", T.ROTATE_270),
    ("kimono.mirror-horizontal.avif", "kimono.png", T.FLIP_LEFT_RIGHT),
    ("kimono.mirror-vertical.avif", "kimono.png", T.FLIP_TOP_BOTTOM),
    ("kimono.mirror-vertical.rotate270.avif", "kimono.png", T.TRANSPOSE),
])
def test_avif_shows_its_container_rotation_and_mirror(name, ref, op):
    got, want = _pixels(name), _reference(ref, op)
    assert np.abs(got - want).mean() < 4.0            # the same picture, as displayed
    other = _reference("kimono.png", T.ROTATE_180)
    assert np.abs(got - other).mean() > 20.0          # and not some other orientation


def test_avif_clean_aperture_crop_is_applied():
    d = decode_path(str(MODERN / "avif" / "kimono.crop.avif"), 128)
    assert (d.width, d.height) == (385, 330)
    want = _reference("kimono.png", box=(271, 39, 656, 369))
    assert np.abs(d.pixels.astype(np.int16) - want).mean() < 4.0


def test_heic_is_upright_and_keeps_its_size():
    d = decode_path(str(MODERN / "heic" / "arrow.heic"), 64)
    assert d.status == STATUS_OK and (d.width, d.height) == (3024, 4032)
    d = decode_path(str(MODERN / "heic" / "cat.hif"), 64)
    assert d.status == STATUS_OK and (d.width, d.height) == (4240, 2832)


def test_unsupported_formats_are_named(tmp_path):
    for name, data, says in [("doc.jpg", b"%PDF-1.7\n" + b"x" * 100, "format PDF not supported"),
                             ("x.png", b"\x00" * 64, "not an image format"),
                             ("e.heic", b"", "empty file")]:
        (tmp_path / name).write_bytes(data)
        d = decode_path(str(tmp_path / name), 64)
        assert d.status == STATUS_FAILED and d.error.startswith(says), d.error


@pytest.mark.parametrize("name", ["kimono.avif", "kimono.rotate90.avif", "kimono.rotate270.avif",
                                  "kimono.mirror-horizontal.avif", "kimono.mirror-vertical.avif",
                                  "kimono.mirror-vertical.rotate270.avif", "kimono.crop.avif"])
def test_report_thumbnails_show_what_the_index_saw(name):
    """The HTML report's thumbnail is turned (and cropped) once, as decoding does: a
    rotated AVIF is not shown upright under a caption saying it is rotated."""
    import base64
    import io

    from alice_gpu.actions.report import thumbnail

    uri, why = thumbnail(str(MODERN / "avif" / name), 128)
    assert uri is not None, why
    thumb = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB")
    d = decode_path(str(MODERN / "avif" / name), 64)
    assert thumb.width / thumb.height == pytest.approx(d.width / d.height, rel=0.02)
    small = np.asarray(thumb.resize((64, 64), Image.Resampling.LANCZOS), np.int16)
    assert np.abs(small - d.pixels.astype(np.int16)).mean() < 6.0
