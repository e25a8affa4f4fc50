"""Decode-stage helper: which generator made an image, and with what prompt and settings.

Input is what :mod:`.metadata` found in the containers: PNG text chunks, EXIF
fields (UserComment, ImageDescription, Make, Model, Software, Artist), XMP and
whether a C2PA manifest is present. Output is ``ai_source`` (one of
``SOURCES``), the prompt, the negative prompt, the model, seed, steps, sampler
and cfg, and ``ai_meta``: the raw blocks as JSON. Each generator's format is
recognised by its own keys first (they are unambiguous), then by content.
ComfyUI prompts are found by following the graph from the sampler's positive
input, not by taking the first string.
"""

from __future__ import annotations

import gzip
import json
import re
from typing import Any, Callable

SOURCES = ("a1111", "comfyui", "invokeai", "novelai", "fooocus", "swarmui", "stability-matrix",
           "tensorart", "civitai", "drawthings", "midjourney", "c2pa", "none")
MAX_RAW = 256 * 1024          # ai_meta keeps at most this many characters per block

_A1111_SETTING = re.compile(r"\s*([\w][\w \-/().]*?):\s*(\"(?:\\.|[^\"])*\"|\[[^\]]*\]|\{[^}]*\}|[^,]*)"
                            r"\s*(?:,|$)")
_COMFY_SAMPLER = re.compile(r"^[a-z0-9]+(_[a-z0-9]+)+$")


def _json(text: str | None) -> Any:
    if not text:
        return None
    text = text.strip().strip("\x00").strip()
    if not text or text[0] not in "{[":
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def _num(value: Any, kind: type = float) -> Any:
    if value is None or isinstance(value, bool):
        return None
    try:
        out = kind(float(value)) if kind is int else kind(value)
    except (TypeError, ValueError, OverflowError):
        return None
    if kind is int and not -(2 ** 63) <= out < 2 ** 63:
        return None
    return out


def _clean(text: Any) -> str | None:
    if not isinstance(text, str):
        return None
    text = text.strip()
    return text or None


# --- A1111 and the formats that copy it -------------------------------------------------

def parse_a1111(text: str) -> dict[str, Any]:
    """'prompt\\nNegative prompt: ...\\nSteps: 20, Sampler: ..., Seed: 1, ...'."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").strip().split("\n")
    settings_at = next((k for k in range(len(lines) - 1, -1, -1)
                        if re.match(r"\s*Steps:\s*\d", lines[k])), None)
    settings: dict[str, str] = {}
    if settings_at is not None:
        for m in _A1111_SETTING.finditer(lines[settings_at]):
            settings[m.group(1).strip()] = m.group(2).strip().strip('"')
        body = lines[:settings_at]
    else:
        body = lines
    prompt, negative, into_negative = [], [], False
    for line in body:
        if line.startswith("Negative prompt:"):
            into_negative = True
            line = line[len("Negative prompt:"):]
        (negative if into_negative else prompt).append(line)
    low = {k.lower(): v for k, v in settings.items()}
    return {"prompt": _clean("\n".join(prompt)), "negative_prompt": _clean("\n".join(negative)),
            "ai_model": _clean(low.get("model")), "seed": _num(low.get("seed"), int),
            "steps": _num(low.get("steps"), int),
            "sampler": _clean(low.get("sampler")), "cfg": _num(low.get("cfg scale")),
            "_settings": settings}


def _a1111_source(parsed: dict[str, Any], text: str) -> str:
    settings = parsed.get("_settings", {})
    if "Civitai resources" in text or "Civitai metadata" in text:
        return "civitai"
    if "ComfyUI" in settings.get("Version", "") or (
            parsed.get("sampler") and _COMFY_SAMPLER.match(parsed["sampler"] or "")):
        return "comfyui"            # ComfyUI save nodes that write the A1111 format
    return "a1111"                  # and Forge, reForge, Forge-Neo, SD.Next


# --- ComfyUI ------------------------------------------------------------------------------

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
        out["prompt"] = _clean(texts[0]) if texts else None
        return out
    # the sampler that runs first (lowest numeric id) is the one the prompt is written for
    samplers.sort(key=lambda kv: (not str(kv[0]).isdigit(), int(kv[0]) if str(kv[0]).isdigit()
                                  else 0, str(kv[0])))
    _, sampler = samplers[0]
    inputs = sampler["inputs"]
    positive = inputs.get("positive", inputs.get("guider"))
    out["prompt"] = _clean("\n".join(dict.fromkeys(_texts(nodes, positive, set()))))
    negative = inputs.get("negative")
    if negative is None and _is_link(inputs.get("guider")):
        negative = (nodes.get(str(inputs["guider"][0])) or {}).get("inputs", {}).get("negative")
    out["negative_prompt"] = _clean("\n".join(dict.fromkeys(_texts(nodes, negative, set()))))
    seed = inputs.get("seed", inputs.get("noise_seed", inputs.get("noise")))
    out["seed"] = _num(_follow_value(nodes, seed, ("seed", "noise_seed", "value", "int")), int)
    steps = inputs.get("steps")
    if steps is None and _is_link(inputs.get("sigmas")):
        steps = (nodes.get(str(inputs["sigmas"][0])) or {}).get("inputs", {}).get("steps")
    out["steps"] = _num(_follow_value(nodes, steps, ("steps", "value", "int")), int)
    out["cfg"] = _num(_follow_value(nodes, inputs.get("cfg"), ("cfg", "value", "float")))
    sampler_name = inputs.get("sampler_name")
    if sampler_name is None and _is_link(inputs.get("sampler")):
        sampler_name = (nodes.get(str(inputs["sampler"][0])) or {}).get("inputs", {}).get(
            "sampler_name")
    out["sampler"] = _clean(_follow_value(nodes, sampler_name, ("sampler_name", "value")))
    model = _model(nodes, inputs.get("model"))
    if model is None and _is_link(inputs.get("guider")):
        model = _model(nodes, (nodes.get(str(inputs["guider"][0])) or {}).get("inputs", {}).get(
            "model"))
    if model is None:
        model = next((v["inputs"][k] for v in nodes.values() for k in _LOADER_KEYS
                      if isinstance(v["inputs"].get(k), str)), None)
    out["ai_model"] = _clean(model)
    return out


# --- the others -----------------------------------------------------------------------

def _from_keys(d: dict, **keys: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field_name, names in keys.items():
        value = next((d[n] for n in names if d.get(n) not in (None, "")), None)
        if field_name in ("seed", "steps"):
            value = _num(value, int)
        elif field_name == "cfg":
            value = _num(value)
        elif field_name == "ai_model" and isinstance(value, dict):
            value = value.get("name") or value.get("model_name") or value.get("modelFileName") \
                or value.get("label")
        elif isinstance(value, list):
            value = "\n".join(str(p.get("prompt", p)) if isinstance(p, dict) else str(p)
                              for p in value)
        out[field_name] = _clean(value) if field_name in ("prompt", "negative_prompt", "ai_model",
                                                          "sampler") else value
    return out


_GENERIC = dict(prompt=("prompt", "positive_prompt", "Prompt", "positivePrompt"),
                negative_prompt=("negative_prompt", "negativePrompt", "Negative", "uc",
                                 "negative"),
                ai_model=("model", "base_model", "model_name", "Model", "baseModel", "checkpoint"),
                seed=("seed", "Seed"), steps=("steps", "num_inference_steps", "Steps"),
                sampler=("sampler", "sampler_name", "scheduler", "Sampler"),
                cfg=("cfg_scale", "cfg", "guidance_scale", "scale", "cfgScale", "CFG scale",
                     "cfgscale"))


def _invoke_dream(text: str) -> dict[str, Any]:
    """InvokeAI 2.x: '"prompt" -s 50 -S 12345 -W 512 -H 512 -C 7.5 -A k_lms'."""
    m = re.match(r'\s*"(.*)"\s*(.*)$', text, re.S)
    prompt, flags = (m.group(1), m.group(2)) if m else (text, "")
    opt = dict(re.findall(r"-([a-zA-Z])\s+(\S+)", flags))
    negative = re.findall(r"\[([^\]]*)\]", prompt)
    return {"prompt": _clean(re.sub(r"\[[^\]]*\]", "", prompt)),
            "negative_prompt": _clean(" ".join(negative)), "seed": _num(opt.get("S"), int),
            "steps": _num(opt.get("s"), int), "cfg": _num(opt.get("C")),
            "sampler": _clean(opt.get("A")), "ai_model": None}


def _stealth(alpha: Callable[[], Any] | None) -> str | None:
    """A1111 parameters hidden in the alpha channel's low bits (stealth pnginfo)."""
    if alpha is None:
        return None
    try:
        plane = alpha()
    except Exception:  # noqa: BLE001 - no alpha plane: nothing hidden
        return None
    if plane is None:
        return None
    import numpy as np

    bits = (np.asarray(plane, np.uint8).T.reshape(-1) & 1)          # column by column
    head = np.packbits(bits[:15 * 8]).tobytes()
    if head not in (b"stealth_pnginfo", b"stealth_pngcomp"):
        return None
    length = int.from_bytes(np.packbits(bits[120:152]).tobytes(), "big")
    payload = np.packbits(bits[152:152 + length]).tobytes()
    try:
        return (gzip.decompress(payload) if head == b"stealth_pngcomp" else payload).decode(
            "utf-8", "replace")
    except (OSError, EOFError):
        return None


def _xmp_field(xmp: str, name: str) -> str | None:
    m = re.search(rf"{name}\s*=\s*\"([^\"]*)\"", xmp) or \
        re.search(rf"<{name}>\s*(?:<rdf:Alt>\s*<rdf:li[^>]*>)?(.*?)(?:</rdf:li>\s*</rdf:Alt>\s*)?"
                  rf"</{name}>", xmp, re.S)
    if not m:
        return None
    import html

    return html.unescape(m.group(1)).strip() or None


def _result(source: str, fields: dict[str, Any], blocks: dict[str, Any]) -> dict[str, Any]:
    out = {k: fields.get(k) for k in ("prompt", "negative_prompt", "ai_model", "seed", "steps",
                                      "sampler", "cfg")}
    out["ai_source"] = source
    kept = {k: (v[:MAX_RAW] if isinstance(v, str) else v) for k, v in blocks.items() if v}
    out["ai_meta"] = json.dumps(kept, ensure_ascii=False) if kept else None
    return out


def _from_png_text(text: dict[str, str], blocks: dict[str, Any]) -> dict[str, Any] | None:
    """PNG text chunks: each generator's own keys first (they are unambiguous)."""
    if "invokeai_metadata" in text:
        d = _json(text["invokeai_metadata"]) or {}
        return _result("invokeai", _from_keys(d, **_GENERIC), blocks)
    if "sd-metadata" in text:
        d = _json(text["sd-metadata"]) or {}
        image = d.get("image", {}) if isinstance(d.get("image"), dict) else {}
        fields = _from_keys(image, **_GENERIC)
        fields["ai_model"] = _clean(d.get("model_weights") or d.get("model"))
        return _result("invokeai", fields, blocks)
    if "Dream" in text:
        return _result("invokeai", _invoke_dream(text["Dream"]), blocks)
    if "smproj" in text or "parameters-json" in text:
        fields = parse_a1111(text["parameters"]) if "parameters" in text else \
            _from_keys(_json(text["parameters-json"]) or {}, **_GENERIC)
        return _result("stability-matrix", fields, blocks)
    if "generation_data" in text:
        d = _json(text["generation_data"]) or {}
        return _result("tensorart", _from_keys(d, **_GENERIC), blocks)
    if "fooocus_scheme" in text:
        d = _json(text.get("parameters")) or {}
        return _result("fooocus", _from_keys(d, **_GENERIC), blocks)
    if "NovelAI" in (text.get("Software", "") + text.get("Source", "")):
        d = _json(text.get("Comment")) or {}
        fields = _from_keys(d, **_GENERIC)
        fields["prompt"] = fields.get("prompt") or _clean(text.get("Description"))
        return _result("novelai", fields, blocks)
    if "Job ID" in text.get("Description", "") or "Midjourney" in text.get("Author", "") + \
            text.get("Software", ""):
        fields = parse_a1111(text.get("Description", ""))
        return _result("midjourney", fields, blocks)
    params = text.get("parameters")
    if params:
        d = _json(params)
        if isinstance(d, dict) and "sui_image_params" in d:
            return _result("swarmui", _from_keys(d["sui_image_params"], **_GENERIC), blocks)
        if isinstance(d, dict):
            source = "fooocus" if "Fooocus" in json.dumps(d)[:4096] or "Prompt" in d else "a1111"
            return _result(source, _from_keys(d, **_GENERIC), blocks)
        parsed = parse_a1111(params)
        source = "comfyui" if ("prompt" in text or "workflow" in text) else \
            _a1111_source(parsed, params)
        if source == "comfyui" and _json(text.get("prompt")):
            comfy = parse_comfy(_json(text["prompt"]))
            parsed = {**parsed, **{k: v for k, v in comfy.items() if v is not None
                                   and not parsed.get(k)}}
        return _result(source, parsed, blocks)
    graph = _json(text.get("prompt"))
    if isinstance(graph, dict) or "workflow" in text:
        return _result("comfyui", parse_comfy(graph) if isinstance(graph, dict) else {}, blocks)

    return None


def _from_exif(exif: dict[str, Any], blocks: dict[str, Any]) -> dict[str, Any] | None:
    """EXIF: UserComment (A1111 and forks, SwarmUI, Civitai, ComfyUI savers), Make/Model
    (ComfyUI's WebP saver), ImageDescription (save-image-extended), NovelAI WebP."""
    uc, desc = exif.get("user_comment"), exif.get("description")
    make, model, software = exif.get("camera_make"), exif.get("camera_model"), exif.get("software")
    if model and model.startswith("prompt:") or make and make.startswith("workflow:"):
        graph = _json(model[len("prompt:"):]) if model and model.startswith("prompt:") else None
        return _result("comfyui", parse_comfy(graph) if isinstance(graph, dict) else {}, blocks)
    if (desc and desc.startswith("Workflow:")) or (make and make.startswith("Prompt:")):
        graph = _json(make[len("Prompt:"):]) if make and make.startswith("Prompt:") else None
        return _result("comfyui", parse_comfy(graph) if isinstance(graph, dict) else {}, blocks)
    if uc:
        d = _json(uc)
        if isinstance(d, dict):
            if "sui_image_params" in d:
                return _result("swarmui", _from_keys(d["sui_image_params"], **_GENERIC), blocks)
            if isinstance(d.get("prompt"), dict):
                return _result("comfyui", parse_comfy(d["prompt"]), blocks)
            if "Comment" in d or "NovelAI" in str(d.get("Software", "")):
                inner = _json(d.get("Comment")) if isinstance(d.get("Comment"), str) else d
                fields = _from_keys(inner or {}, **_GENERIC)
                fields["prompt"] = fields.get("prompt") or _clean(d.get("Description"))
                return _result("novelai", fields, blocks)
            return _result("a1111", _from_keys(d, **_GENERIC), blocks)
        if re.search(r"(^|\n)\s*Steps:\s*\d", uc):
            parsed = parse_a1111(uc)
            return _result(_a1111_source(parsed, uc), parsed, blocks)
    if software and "NovelAI" in software:
        return _result("novelai", {"prompt": _clean(desc)}, blocks)

    return None


def parse_generation(text: dict[str, str], exif: dict[str, Any], xmp: str | None, c2pa: bool,
                     comment: str | None = None, alpha: Callable[[], Any] | None = None
                     ) -> dict[str, Any]:
    """``ai_source`` and the generation fields from the blocks a container holds."""
    blocks: dict[str, Any] = dict(text)
    uc, desc = exif.get("user_comment"), exif.get("description")
    make, model, software = exif.get("camera_make"), exif.get("camera_model"), exif.get("software")
    for key, value in (("exif:UserComment", uc), ("exif:ImageDescription", desc),
                       ("exif:Make", make), ("exif:Model", model), ("exif:Software", software),
                       ("xmp", xmp)):
        if value:
            blocks[key] = value
    if c2pa:
        blocks["c2pa"] = True
    found = _from_png_text(text, blocks) or _from_exif(exif, blocks)
    if found is not None:
        return found
    # XMP (Draw Things), C2PA (ChatGPT, Gemini, Microsoft Designer)
    if xmp and "Draw Things" in xmp:
        fields = {"prompt": _xmp_field(xmp, "dc:description")}
        inner = _json(_xmp_field(xmp, "exif:UserComment"))
        if isinstance(inner, dict):
            fields = {**_from_keys(inner, **_GENERIC), **{k: v for k, v in fields.items() if v}}
            fields["prompt"] = _clean(inner.get("c")) or fields.get("prompt")
            fields["negative_prompt"] = _clean(inner.get("uc")) or fields.get("negative_prompt")
        return _result("drawthings", fields, blocks)
    if c2pa:
        return _result("c2pa", {}, blocks)
    hidden = _stealth(alpha) if not text and not uc else None
    if hidden:
        blocks["stealth"] = hidden
        parsed = parse_a1111(hidden)
        return _result(_a1111_source(parsed, hidden), parsed, blocks)
    # not generated: only text a tool left (a comment, a description) is kept as blocks
    return _result("none", {}, dict(text) if text else {})
