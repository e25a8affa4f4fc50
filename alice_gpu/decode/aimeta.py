"""Decode-stage helper: which generator made an image, and with what prompt and settings.

Input is what :mod:`.metadata` found in the containers: PNG text chunks, EXIF
fields (UserComment, ImageDescription, Make, Model, Software, Artist), XMP and
whether a C2PA manifest is present. Output is ``ai_source`` (one of
``config.SOURCES``), the prompt, the negative prompt, the model, seed, steps, sampler
and cfg, and ``ai_meta``: the raw blocks as JSON. Each generator's format is
recognised by its own keys first (they are unambiguous), then by content.
ComfyUI graphs are read by :mod:`.comfy`.
"""

from __future__ import annotations

import json
import re
import zlib
from typing import Any, Callable

from .comfy import parse_comfy
from .values import as_json, as_number, clean

MAX_RAW = 256 * 1024          # ai_meta keeps at most this many characters per block
MAX_TEXT = 1 << 20            # a text block kept up to 1 MiB (ComfyUI workflows: ~100 KB)

_A1111_SETTING = re.compile(r"\s*([\w][\w \-/().]*?):\s*(\"(?:\\.|[^\"])*\"|\[[^\]]*\]|\{[^}]*\}|[^,]*)"
                            r"\s*(?:,|$)")
_COMFY_SAMPLER = re.compile(r"^[a-z0-9]+(_[a-z0-9]+)+$")


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
    return {"prompt": clean("\n".join(prompt)), "negative_prompt": clean("\n".join(negative)),
            "ai_model": clean(low.get("model")), "seed": as_number(low.get("seed"), int),
            "steps": as_number(low.get("steps"), int),
            "sampler": clean(low.get("sampler")), "cfg": as_number(low.get("cfg scale")),
            "_settings": settings}


def _a1111_source(parsed: dict[str, Any], text: str) -> str:
    settings = parsed.get("_settings", {})
    if "Civitai resources" in text or "Civitai metadata" in text:
        return "civitai"
    if "ComfyUI" in settings.get("Version", "") or (
            parsed.get("sampler") and _COMFY_SAMPLER.match(parsed["sampler"] or "")):
        return "comfyui"            # ComfyUI save nodes that write the A1111 format
    return "a1111"                  # and Forge, reForge, Forge-Neo, SD.Next


# --- the others -----------------------------------------------------------------------

def _from_keys(d: dict, **keys: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field_name, names in keys.items():
        value = next((d[n] for n in names if d.get(n) not in (None, "")), None)
        if field_name in ("seed", "steps"):
            value = as_number(value, int)
        elif field_name == "cfg":
            value = as_number(value)
        elif field_name == "ai_model" and isinstance(value, dict):
            value = value.get("name") or value.get("model_name") or value.get("modelFileName") \
                or value.get("label")
        elif isinstance(value, list):
            value = "\n".join(str(p.get("prompt", p)) if isinstance(p, dict) else str(p)
                              for p in value)
        out[field_name] = clean(value) if field_name in ("prompt", "negative_prompt", "ai_model",
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
    return {"prompt": clean(re.sub(r"\[[^\]]*\]", "", prompt)),
            "negative_prompt": clean(" ".join(negative)), "seed": as_number(opt.get("S"), int),
            "steps": as_number(opt.get("s"), int), "cfg": as_number(opt.get("C")),
            "sampler": clean(opt.get("A")), "ai_model": None}


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

    arr = np.asarray(plane, np.uint8)
    if arr.ndim != 2 or arr.size < 152:
        return None

    def bits(n: int) -> np.ndarray:
        """The first ``n`` low bits, column by column (only the columns that hold them)."""
        return arr[:, :-(-n // arr.shape[0])].T.reshape(-1)[:n] & 1

    first = bits(152)
    head = np.packbits(first[:120]).tobytes()
    if head not in (b"stealth_pnginfo", b"stealth_pngcomp"):
        return None
    length = int.from_bytes(np.packbits(first[120:152]).tobytes(), "big")
    payload = np.packbits(bits(min(152 + length, arr.size))[152:]).tobytes()
    if head == b"stealth_pngcomp":
        try:     # a gzip stream, inflated no further than a text chunk may be (a bomb stops)
            payload = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(payload, MAX_TEXT)
        except zlib.error:
            return None
    return payload[:MAX_TEXT].decode("utf-8", "replace")


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
        d = as_json(text["invokeai_metadata"]) or {}
        return _result("invokeai", _from_keys(d, **_GENERIC), blocks)
    if "sd-metadata" in text:
        d = as_json(text["sd-metadata"]) or {}
        image = d.get("image", {}) if isinstance(d.get("image"), dict) else {}
        fields = _from_keys(image, **_GENERIC)
        fields["ai_model"] = clean(d.get("model_weights") or d.get("model"))
        return _result("invokeai", fields, blocks)
    if "Dream" in text:
        return _result("invokeai", _invoke_dream(text["Dream"]), blocks)
    if "smproj" in text or "parameters-json" in text:
        fields = parse_a1111(text["parameters"]) if "parameters" in text else \
            _from_keys(as_json(text["parameters-json"]) or {}, **_GENERIC)
        return _result("stability-matrix", fields, blocks)
    if "generation_data" in text:
        d = as_json(text["generation_data"]) or {}
        return _result("tensorart", _from_keys(d, **_GENERIC), blocks)
    if "fooocus_scheme" in text:
        d = as_json(text.get("parameters")) or {}
        return _result("fooocus", _from_keys(d, **_GENERIC), blocks)
    if "NovelAI" in (text.get("Software", "") + text.get("Source", "")):
        d = as_json(text.get("Comment")) or {}
        fields = _from_keys(d, **_GENERIC)
        fields["prompt"] = fields.get("prompt") or clean(text.get("Description"))
        return _result("novelai", fields, blocks)
    if "Job ID" in text.get("Description", "") or "Midjourney" in text.get("Author", "") + \
            text.get("Software", ""):
        fields = parse_a1111(text.get("Description", ""))
        return _result("midjourney", fields, blocks)
    params = text.get("parameters")
    if params:
        d = as_json(params)
        if isinstance(d, dict) and "sui_image_params" in d:
            return _result("swarmui", _from_keys(d["sui_image_params"], **_GENERIC), blocks)
        if isinstance(d, dict):
            source = "fooocus" if "Fooocus" in json.dumps(d)[:4096] or "Prompt" in d else "a1111"
            return _result(source, _from_keys(d, **_GENERIC), blocks)
        parsed = parse_a1111(params)
        source = "comfyui" if ("prompt" in text or "workflow" in text) else \
            _a1111_source(parsed, params)
        if source == "comfyui" and as_json(text.get("prompt")):
            comfy = parse_comfy(as_json(text["prompt"]))
            parsed = {**parsed, **{k: v for k, v in comfy.items() if v is not None
                                   and not parsed.get(k)}}
        return _result(source, parsed, blocks)
    graph = as_json(text.get("prompt"))
    if isinstance(graph, dict) or "workflow" in text:
        return _result("comfyui", parse_comfy(graph) if isinstance(graph, dict) else {}, blocks)

    return None


def _from_exif(exif: dict[str, Any], blocks: dict[str, Any]) -> dict[str, Any] | None:
    """EXIF: UserComment (A1111 and forks, SwarmUI, Civitai, ComfyUI savers), Make/Model
    (ComfyUI's WebP saver), ImageDescription (save-image-extended), NovelAI WebP."""
    uc, desc = exif.get("user_comment"), exif.get("description")
    make, model, software = exif.get("camera_make"), exif.get("camera_model"), exif.get("software")
    if model and model.startswith("prompt:") or make and make.startswith("workflow:"):
        graph = as_json(model[len("prompt:"):]) if model and model.startswith("prompt:") else None
        return _result("comfyui", parse_comfy(graph) if isinstance(graph, dict) else {}, blocks)
    if (desc and desc.startswith("Workflow:")) or (make and make.startswith("Prompt:")):
        graph = as_json(make[len("Prompt:"):]) if make and make.startswith("Prompt:") else None
        return _result("comfyui", parse_comfy(graph) if isinstance(graph, dict) else {}, blocks)
    if uc:
        d = as_json(uc)
        if isinstance(d, dict):
            if "sui_image_params" in d:
                return _result("swarmui", _from_keys(d["sui_image_params"], **_GENERIC), blocks)
            if isinstance(d.get("prompt"), dict):
                return _result("comfyui", parse_comfy(d["prompt"]), blocks)
            if "Comment" in d or "NovelAI" in str(d.get("Software", "")):
                inner = as_json(d.get("Comment")) if isinstance(d.get("Comment"), str) else d
                fields = _from_keys(inner or {}, **_GENERIC)
                fields["prompt"] = fields.get("prompt") or clean(d.get("Description"))
                return _result("novelai", fields, blocks)
            return _result("a1111", _from_keys(d, **_GENERIC), blocks)
        if re.search(r"(^|\n)\s*Steps:\s*\d", uc):
            parsed = parse_a1111(uc)
            return _result(_a1111_source(parsed, uc), parsed, blocks)
    if software and "NovelAI" in software:
        return _result("novelai", {"prompt": clean(desc)}, blocks)

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
        inner = as_json(_xmp_field(xmp, "exif:UserComment"))
        if isinstance(inner, dict):
            fields = {**_from_keys(inner, **_GENERIC), **{k: v for k, v in fields.items() if v}}
            fields["prompt"] = clean(inner.get("c")) or fields.get("prompt")
            fields["negative_prompt"] = clean(inner.get("uc")) or fields.get("negative_prompt")
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
