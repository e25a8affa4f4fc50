"""The CPU/GPU split (alice_gpu.gpu): what can be checked without a GPU is checked here;
the CUDA-only parts run when a GPU is present."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from alice_gpu.decode import DecodePlan, decode_file
from alice_gpu.errors import DeviceError
from alice_gpu.gpu.devices import select_device
from alice_gpu.gpu.nvjpeg import orient
from alice_gpu.gpu.staging import Stager
from alice_gpu.records import STATUS_OK, STATUS_RAW, FileEntry
from conftest import cuda_test

PIL_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                 4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
                 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
                 8: Image.Transpose.ROTATE_90}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_device_orientation_matches_pillow(orientation):
    arr = np.random.default_rng(orientation).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    ref = arr if orientation == 1 else np.asarray(Image.fromarray(arr).transpose(
        PIL_TRANSPOSE[orientation]))
    got = orient(torch.from_numpy(arr).permute(2, 0, 1), orientation).permute(1, 2, 0).numpy()
    assert got.shape == ref.shape and np.array_equal(got, ref)


def test_select_device():
    assert select_device("cpu").type == "cpu"
    assert select_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(DeviceError):
        select_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no CUDA GPU"):
            select_device("cuda")


def test_stager_gives_nchw_uint8(device):
    stager = Stager(device)
    imgs = [np.full((16, 16, 3), v, np.uint8) for v in (1, 2, 3)]
    for _ in range(4):    # more batches than ring slots
        out = stager.stage(imgs)
        with stager.compute():
            got = out.float().mean(dim=(1, 2, 3)).cpu().tolist()
        assert out.shape == (3, 3, 16, 16) and out.dtype == torch.uint8
        assert got == [1.0, 2.0, 3.0]


def test_workers_hand_jpeg_bytes_to_the_gpu_decoder(tmp_path):
    path = tmp_path / "a.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (40, 20), (10, 20, 30)).save(path, exif=exif.tobytes())
    png = tmp_path / "b.png"
    Image.new("RGB", (40, 20)).save(png)
    st = path.stat()
    raw = DecodePlan(32, gpu_decode=True)
    d = decode_file(FileEntry(str(path), st.st_size, st.st_mtime_ns), raw)
    assert d.status == STATUS_RAW and d.raw == path.read_bytes() and d.orientation == 6
    assert (d.width, d.height) == (20, 40) and d.pixels is None
    p = decode_file(FileEntry(str(png), 1, 1), raw)
    assert p.status == STATUS_OK and p.pixels.shape == (32, 32, 3)   # non-JPEG: Pillow


@cuda_test
def test_gpu_jpeg_decode_is_close_to_pillow(photo_set):
    from alice_gpu.features.hashes_np import hamming
    from alice_gpu.features.hashes_torch import compute_hashes, to_uint64
    from alice_gpu.gpu.nvjpeg import gpu_decode_jpegs

    _, paths, pixels = photo_set
    datas = [open(p, "rb").read() for p in paths[:64]]
    batch, rejected = gpu_decode_jpegs(datas, [1] * len(datas), 256, torch.device("cuda"))
    assert rejected == []
    diff = (batch.permute(0, 2, 3, 1).cpu().numpy().astype(int) - pixels[:64].astype(int))
    assert np.abs(diff).mean() < 6
    gpu = to_uint64(compute_hashes(batch)["phash"])
    cpu = to_uint64(compute_hashes(torch.from_numpy(pixels[:64]).permute(0, 3, 1, 2).cuda())["phash"])
    assert np.mean([hamming(a, b) <= 4 for a, b in zip(gpu, cpu)]) >= 0.9


@cuda_test
def test_gpu_decode_rejects_garbage_without_sinking_the_batch(photo_set):
    from alice_gpu.gpu.nvjpeg import gpu_decode_jpegs

    _, paths, _ = photo_set
    good = open(paths[0], "rb").read()
    batch, rejected = gpu_decode_jpegs([good, b"\xff\xd8\xff garbage", good], [1, 1, 1], 64,
                                       torch.device("cuda"))
    assert rejected == [1] and batch.shape == (2, 3, 64, 64)
