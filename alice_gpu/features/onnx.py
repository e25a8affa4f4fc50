"""Embeddings on the CPU through ONNX Runtime: the same network, exported from the same
torch weights, run by a runtime that reaches several times torch eager's speed there.

The graph is exported on first use (this needs torch and ``onnxscript``, once) and
cached in the user's cache folder, keyed by the weights' hash and the exporter's and
the runtime's versions; it is written atomically, and exported again when stale or
unreadable. Running it needs neither torch nor the model's Python code: a cold query
loads a session from the cached file. Preprocessing is numpy: the centre crop of the
working image (at the default working size it is exactly the model's input, so no
resampling), then the model's scaling.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from ..errors import ModelError
from .batch import Features, Pending
from .modelcfg import BUILTIN, BUILTIN_WEIGHTS, PretrainedCfg, override_weights

if TYPE_CHECKING:
    from .clock import StageClock

log = logging.getLogger(__name__)

CACHE_ENV = "ALICE_GPU_CACHE"
OPSET = 18
MICRO_BATCH = 32       # images per inference call (bench_embed.py: 96 at once runs slower)


def cache_dir() -> Path:
    """$ALICE_GPU_CACHE, else $XDG_CACHE_HOME/alice-gpu, else ~/.cache/alice-gpu."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "alice-gpu"


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "none"


def _cfg_and_weights(name: str) -> tuple[PretrainedCfg, str]:
    """A built-in model's metadata and weights without torch; a plug-in's through the
    registry (which imports torch)."""
    if name in BUILTIN:
        return BUILTIN[name], override_weights(name) or BUILTIN_WEIGHTS[name]()
    from .models import model_cfg, weights_path

    return model_cfg(name), weights_path(name)


def _digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


_EXPORTING = threading.Lock()


def model_file(name: str, announce: Callable[[str], None] | None = None) -> Path:
    """The cached ONNX file of ``name``, exported now if missing or stale."""
    cfg, weights = _cfg_and_weights(name)
    key = (f"{name}-{_digest(weights)}-torch{_version('torch')}-"
           f"ort{_version('onnxruntime')}-opset{OPSET}")
    folder = cache_dir() / "onnx"
    path = folder / f"{key}.onnx"
    if path.is_file():
        return path
    with _EXPORTING:                  # torch.export is not re-entrant across threads
        if path.is_file():            # another thread (serve's warm-up) just made it
            return path
        export_file(name, cfg, folder, path, announce)
    for stale in folder.glob(f"{name}-*.onnx"):          # other weights or versions
        if stale != path:
            stale.unlink(missing_ok=True)
    return path


def export_file(name: str, cfg: PretrainedCfg, folder: Path, path: Path,
                announce: Callable[[str], None] | None) -> None:
    (announce or log.warning)(f"exporting the {name} model to ONNX for onnxruntime, once "
                              f"(cached in {folder})")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(f"cannot write the model cache {folder}: {exc.strerror}") from None
    _drop_orphans(folder, name)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}-{os.getpid()}-", suffix=".onnx", dir=folder)
    os.close(fd)
    try:
        _export(name, cfg, tmp)
        os.replace(tmp, path)                              # atomic: whole file or none
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _drop_orphans(folder: Path, name: str) -> None:
    """Half-written exports of processes that are gone (killed mid-export)."""
    for tmp in folder.glob(f".{name}-*-*.onnx"):
        try:
            pid = int(tmp.name.split("-")[-2])
            os.kill(pid, 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except (ValueError, IndexError, PermissionError):
            continue


def _export(name: str, cfg: PretrainedCfg, out: str) -> None:
    """The fused fp32 network, normalised NCHW float in, pooled features out, exported
    by the dynamo exporter (its graph folds TF "same" padding into the convolutions)."""
    import importlib.util

    if importlib.util.find_spec("onnxscript") is None:
        raise ModelError("exporting the model to ONNX needs onnxscript "
                         "(pip install onnxscript), once")
    import torch

    from .models import create_model

    model = create_model(name, "cpu", optimize=True, precision="fp32")
    model = model.to(memory_format=torch.contiguous_format)
    x = torch.zeros(2, 3, cfg.input_size, cfg.input_size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with torch.inference_mode(False), torch.no_grad():
        program = torch.onnx.export(model, (x,), dynamo=True, opset_version=OPSET,
                                    input_names=["pixels"], output_names=["features"],
                                    dynamic_shapes=({0: batch},), verbose=False)
    program.save(out)


class OnnxEmbedder:
    """uint8 HWC working images in, L2-normalised float32 embeddings out."""

    def __init__(self, name: str, threads: int | None = None,
                 announce: Callable[[str], None] | None = None, precision: str = "fp32"):
        import onnxruntime as ort

        if precision not in ("fp32", "int8"):
            raise ModelError(f"onnxruntime runs fp32 or int8, not {precision}")
        self.cfg, _ = _cfg_and_weights(name)
        self.name, self.threads, self.precision = name, threads or default_threads(), precision
        std = np.asarray(self.cfg.std, np.float32)       # (x / 255 - mean) / std, as x*a - b
        self.scale = (1.0 / (255.0 * std)).reshape(1, 3, 1, 1)
        self.shift = (np.asarray(self.cfg.mean, np.float32) / std).reshape(1, 3, 1, 1)
        path = self._file(announce)
        try:
            self.session = self._session(ort, path)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own kinds
            log.warning("the cached model %s is unreadable (%s): making it again", path,
                        str(exc).splitlines()[0][:200])
            path.unlink(missing_ok=True)
            self.session = self._session(ort, self._file(announce))
        self.input = self.session.get_inputs()[0].name

    def _file(self, announce: Callable[[str], None] | None) -> Path:
        path = model_file(self.name, announce)
        if self.precision == "int8":
            from .quantize import int8_file

            path = int8_file(path, self.preprocess, announce)
        return path

    def _session(self, ort, path: Path):
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # idle threads sleep rather than spin: the decode workers share these cores
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def preprocess(self, pixels: Sequence[np.ndarray]) -> np.ndarray:
        """As the torch model's ``preprocess``: centre crop (``crop_pct``), the model's
        input size, then (x / 255 - mean) / std, as NCHW float32."""
        size = self.cfg.input_size
        out = np.empty((len(pixels), 3, size, size), np.float32)
        for i, image in enumerate(pixels):
            side = image.shape[0]
            crop = int(round(side * self.cfg.crop_pct))
            off = (side - crop) // 2
            image = image[off:off + crop, off:off + crop]
            if crop != size:
                image = _resize(image, size)
            out[i] = image.transpose(2, 0, 1)
        out *= self.scale
        out -= self.shift
        return out

    def embed(self, pixels: Sequence[np.ndarray]) -> np.ndarray:
        """In runs of ``MICRO_BATCH``: larger ones run slower on a CPU (cache)."""
        feats = np.concatenate([
            self.session.run(None, {self.input: self.preprocess(pixels[i:i + MICRO_BATCH])})[0]
            for i in range(0, len(pixels), MICRO_BATCH)])
        norms = np.linalg.norm(feats, axis=1, keepdims=True)
        return (feats / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    """A working size other than the default: Pillow's antialiased bilinear, the filter
    torch's ``antialias=True`` follows (close, not bit for bit)."""
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))


def default_threads() -> int:
    """The runtime's threads: every core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


class OnnxExtractor:
    """The features stage's compute on the CPU through ONNX Runtime, with the interface
    of :class:`~alice_gpu.features.extractor.FeatureExtractor`: ``submit`` starts a batch
    on one inference thread and returns at once (the runtime releases the GIL, so the
    next batch is collected meanwhile); hashes, when a plan left them to this stage, are
    the decode workers' numpy ones."""

    device = "cpu"
    runtime = "onnxruntime"

    def __init__(self, embedder: OnnxEmbedder | None):
        self.embedder = embedder
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="alice-onnx")
        self.lock = threading.Lock()

    @classmethod
    def create(cls, model_name: str | None, threads: int | None = None,
               precision: str = "fp32") -> "OnnxExtractor":
        return cls(OnnxEmbedder(model_name, threads, precision=precision) if model_name
                   else None)

    def submit(self, pixels: Sequence[np.ndarray], hashes: bool = True, embed: bool = True,
               timer: "StageClock | None" = None) -> Pending:
        pixels = list(pixels)
        future = self.pool.submit(self._run, pixels, hashes, embed, timer)
        return Pending(future.result)

    def extract(self, pixels: Sequence[np.ndarray], hashes: bool = True, embed: bool = True,
                timer: "StageClock | None" = None) -> list[Features]:
        return self.submit(pixels, hashes, embed, timer).result()

    def _run(self, pixels: list[np.ndarray], hashes: bool, embed: bool,
             timer: "StageClock | None") -> list[Features]:
        import time

        from ..errors import reason
        from .hashes_np import hashes as np_hashes

        t = time.perf_counter()
        try:
            got = None
            if hashes:
                got = np_hashes(np.stack(pixels))
            emb = self.embedder.embed(pixels) if embed and self.embedder else None
        except Exception as exc:  # noqa: BLE001 - a batch that fails is split per image
            if len(pixels) == 1:
                return [Features(None, None, reason(exc, "features: "))]
            log.warning("a batch of %d failed in onnxruntime (%s); one by one", len(pixels),
                        exc)
            return [f for p in pixels for f in self._run([p], hashes, embed, timer)]
        if timer is not None:
            timer.add("compute", time.perf_counter() - t)
        return [Features(None if got is None else {k: int(v[i]) for k, v in got.items()},
                         None if emb is None else emb[i]) for i in range(len(pixels))]
