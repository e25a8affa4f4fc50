from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.models import EfficientNet_B0_Weights

from alice_gpu.errors import ModelError
from alice_gpu.features.modelcfg import EFFICIENTNET_LITE0
from alice_gpu.features.models import create_model, list_models, model_cfg, register_model


def _accuracy(model, pixels: np.ndarray, rows: list[dict], device) -> tuple[float, float]:
    """Top-1 / top-5 of the model's own ImageNet head against labels.csv class names."""
    categories = EfficientNet_B0_Weights.IMAGENET1K_V1.meta["categories"]  # offline list
    by_name: dict[str, set[int]] = {}
    for i, name in enumerate(categories):
        by_name.setdefault(name.lower(), set()).add(i)
    batch = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()
    top5 = []
    with torch.inference_mode():
        for i in range(0, len(batch), 64):
            x = model.preprocess(batch[i:i + 64].to(device))
            top5.append(model.classify(x).topk(5, dim=1).indices.cpu())
    top5 = torch.cat(top5).numpy()
    t1 = t5 = 0
    for row, pred in zip(rows, top5):
        want = by_name[row["class_name"].lower()]      # every label name is in the list
        t1 += int(pred[0] in want)
        t5 += int(bool(want & set(pred.tolist())))
    return t1 / len(rows), t5 / len(rows)


def test_registry():
    assert "efficientnet_lite0" in list_models()
    assert model_cfg("efficientnet_lite0") == EFFICIENTNET_LITE0
    with pytest.raises(ModelError, match="unknown model"):
        create_model("resnet9000")
    with pytest.raises(ModelError, match="already registered"):
        register_model(EFFICIENTNET_LITE0, lambda cfg: None, lambda: "")


@pytest.mark.slow
def test_weights_load_correctly_imagenet_accuracy(photo_set, device):
    """Real photos with known labels prove the weights, padding and normalisation."""
    rows, _, pixels = photo_set
    if len(rows) < 400:      # the GPU check kit carries a few photos, not the whole set
        pytest.skip(f"needs the whole photo_collection for a meaningful accuracy ({len(rows)} here)")
    top1, top5 = _accuracy(create_model("efficientnet_lite0", device), pixels, rows, device)
    assert top1 >= 0.85 and top5 >= 0.95, (top1, top5)


@pytest.mark.slow
def test_a_near_miss_in_preprocessing_shows_up(photo_set):
    """Symmetric (PyTorch) padding instead of TF "SAME" must cost points: the test has teeth."""
    rows, _, pixels = photo_set
    cpu = torch.device("cpu")
    right, _ = _accuracy(create_model("efficientnet_lite0", cpu), pixels[:200], rows[:200], cpu)
    wrong, _ = _accuracy(create_model("efficientnet_lite0", cpu, padding="symmetric"),
                         pixels[:200], rows[:200], cpu)
    assert right - wrong >= 0.02, (right, wrong)


def test_embeddings_are_unit_length_and_deterministic(photo_set, device):
    _, _, pixels = photo_set
    model = create_model("efficientnet_lite0", device)
    batch = torch.from_numpy(pixels[:8]).permute(0, 3, 1, 2).contiguous().to(device)
    with torch.inference_mode():
        a = model.embed(batch).cpu()
        b = model.embed(batch[:3]).cpu()
    assert a.shape == (8, 1280)
    assert torch.allclose(a.norm(dim=1), torch.ones(8), atol=1e-5)
    assert torch.allclose(a[:3], b, atol=1e-4)        # batch composition does not matter
    assert (a @ a.T).fill_diagonal_(0).max() < 0.99   # different photos, different vectors


def test_same_embedding_on_every_device(photo_set, device):
    _, _, pixels = photo_set
    batch = torch.from_numpy(pixels[:4]).permute(0, 3, 1, 2).contiguous()
    with torch.inference_mode():
        ref = create_model("efficientnet_lite0", "cpu").embed(batch)
        got = create_model("efficientnet_lite0", device).embed(batch.to(device)).cpu()
    assert torch.nn.functional.cosine_similarity(ref, got).min() >= 0.999


def test_folded_batch_norm_gives_the_same_embeddings(photo_set):
    """The inference form (torch's conv-BN fusion, channels_last) is the eager model."""
    _, _, pixels = photo_set
    batch = torch.from_numpy(pixels[:16]).permute(0, 3, 1, 2).contiguous()
    with torch.inference_mode():
        eager = create_model("efficientnet_lite0", "cpu", optimize=False).embed(batch)
        fused = create_model("efficientnet_lite0", "cpu", precision="fp32").embed(batch)
    assert torch.nn.functional.cosine_similarity(eager, fused).min() >= 0.99999
