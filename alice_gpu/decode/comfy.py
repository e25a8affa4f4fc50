"""Decode-stage helper: a ComfyUI graph's prompts, model and settings.

The prompt is found by following the graph from the sampler's positive input
(through guiders, combiners, ControlNet, switches and string nodes), not by
taking the first string; a node that passes both a positive and a negative on
says by the slot a link comes from which one it is.
"""

from __future__ import annotations

from typing import Any

from .values import as_number, clean


_TEXT_KEYS = ("text", "text_g", "text_l", "prompt", "positive", "string", "value", "t5xxl",
              "clip_l")
_PASS_KEYS = ("conditioning", "conditioning_1", "conditioning_2", "conditioning_to",
              "conditioning_from", "positive", "guider", "cond", "base_positive")
_LOADER_KEYS = ("ckpt_name", "unet_name", "model_name", "base_ckpt_name")


def _is_link(v: Any) -> bool:
    return isinstance(v, list) and len(v) == 2 and isinstance(v[0], (str, int)) \
        and isinstance(v[1], int)


# inputs that never carry prompt text: not followed
_NOT_TEXT = {"clip", "model", "vae", "samples", "latent_image", "images", "image", "pixels",
             "mask", "control_net", "switch", "noise", "sigmas", "sampler", "upscale_model",
             "clip_vision", "style_model", "width", "height", "batch_size", "seed"}


def _texts(graph: dict, start: Any, seen: set) -> list[str]:
    """The prompt text that flows into a conditioning input, following links upstream:
    through text encoders, guiders, combiners, ControlNet, switches and string nodes."""
    if not _is_link(start):
        return [start] if isinstance(start, str) and start.strip() else []
    node = graph.get(str(start[0]))
    if not isinstance(node, dict) or str(start[0]) in seen:
        return []
    seen.add(str(start[0]))
    inputs = node.get("inputs", {}) or {}
    kind = str(node.get("class_type", ""))
    if kind == "ConditioningZeroOut":
        return []                                    # an empty negative, not a prompt
    out: list[str] = []
    if "positive" in inputs and "negative" in inputs:
        # a node passing both on (ControlNet, InstructPixToPix, WanImageToVideo...): its
        # outputs are in that order, so the slot a link comes from says which one it is
        slot = start[1]
        return _texts(graph, inputs["negative" if slot == 1 else "positive"], seen) \
            if slot in (0, 1) else []
    if any(w in kind for w in ("TextEncode", "Prompt", "String", "Text", "Primitive")):
        for key in _TEXT_KEYS:
            if key in inputs:
                out += _texts(graph, inputs[key], seen)
        if out:
            return out
    for key in _PASS_KEYS:
        if key in inputs:
            out += _texts(graph, inputs[key], seen)
    if out:
        return out
    for key, value in inputs.items():                # any other node: its linked inputs
        if key not in _NOT_TEXT and _is_link(value):
            out += _texts(graph, value, seen)
    return out


def _follow_value(graph: dict, value: Any, keys: tuple[str, ...], depth: int = 0) -> Any:
    """A widget value, following a link to the node that holds it (a primitive, a seed node)."""
    if not _is_link(value) or depth > 8:
        return value
    node = graph.get(str(value[0]))
    inputs = (node or {}).get("inputs", {}) or {}
    for key in keys:
        if key in inputs:
            return _follow_value(graph, inputs[key], keys, depth + 1)
    return None


def _model(graph: dict, start: Any, depth: int = 0) -> str | None:
    if not _is_link(start) or depth > 16:
        return None
    node = graph.get(str(start[0])) or {}
    inputs = node.get("inputs", {}) or {}
    for key in _LOADER_KEYS:
        if isinstance(inputs.get(key), str):
            return inputs[key]
    return _model(graph, inputs.get("model"), depth + 1)


def parse_comfy(graph: dict) -> dict[str, Any]:
    """The API-format graph: the sampler, and the prompts feeding its positive and
    negative inputs (through guiders, combiners, ControlNet and LoRA nodes)."""
    nodes = {k: v for k, v in graph.items() if isinstance(v, dict) and "inputs" in v}
    samplers = [(k, v) for k, v in nodes.items() if "Sampler" in str(v.get("class_type", ""))
                and str(v.get("class_type", "")) not in ("KSamplerSelect",)]
    out: dict[str, Any] = {}
    if not samplers:
        texts = [t for v in nodes.values() if "TextEncode" in str(v.get("class_type", ""))
                 for t in _texts(nodes, v["inputs"].get("text"), set())]
        out["prompt"] = clean(texts[0]) if texts else None
        return out
    # the sampler that runs first (lowest numeric id) is the one the prompt is written for
    samplers.sort(key=lambda kv: (not str(kv[0]).isdigit(), int(kv[0]) if str(kv[0]).isdigit()
                                  else 0, str(kv[0])))
    _, sampler = samplers[0]
    inputs = sampler["inputs"]
    positive = inputs.get("positive", inputs.get("guider"))
    out["prompt"] = clean("\n".join(dict.fromkeys(_texts(nodes, positive, set()))))
    negative = inputs.get("negative")
    if negative is None and _is_link(inputs.get("guider")):
        negative = (nodes.get(str(inputs["guider"][0])) or {}).get("inputs", {}).get("negative")
    out["negative_prompt"] = clean("\n".join(dict.fromkeys(_texts(nodes, negative, set()))))
    seed = inputs.get("seed", inputs.get("noise_seed", inputs.get("noise")))
    out["seed"] = as_number(_follow_value(nodes, seed, ("seed", "noise_seed", "value", "int")), int)
    steps = inputs.get("steps")
    if steps is None and _is_link(inputs.get("sigmas")):
        steps = (nodes.get(str(inputs["sigmas"][0])) or {}).get("inputs", {}).get("steps")
    out["steps"] = as_number(_follow_value(nodes, steps, ("steps", "value", "int")), int)
    out["cfg"] = as_number(_follow_value(nodes, inputs.get("cfg"), ("cfg", "value", "float")))
    sampler_name = inputs.get("sampler_name")
    if sampler_name is None and _is_link(inputs.get("sampler")):
        sampler_name = (nodes.get(str(inputs["sampler"][0])) or {}).get("inputs", {}).get(
            "sampler_name")
    out["sampler"] = clean(_follow_value(nodes, sampler_name, ("sampler_name", "value")))
    model = _model(nodes, inputs.get("model"))
    if model is None and _is_link(inputs.get("guider")):
        model = _model(nodes, (nodes.get(str(inputs["guider"][0])) or {}).get("inputs", {}).get(
            "model"))
    if model is None:
        model = next((v["inputs"][k] for v in nodes.values() for k in _LOADER_KEYS
                      if isinstance(v["inputs"].get(k), str)), None)
    out["ai_model"] = clean(model)
    return out
