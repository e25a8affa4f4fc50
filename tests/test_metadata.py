"""What files say about themselves: generators, prompts and settings on the real
ai_generated set, EXIF facts of real photos, and the find / show / tag commands."""

from __future__ import annotations

import json
import re
import shutil
import struct
import zlib
from pathlib import Path

import pytest

from alice_gpu.decode.aimeta import parse_comfy, parse_generation
from alice_gpu.decode.metadata import extract, user_comment
from conftest import run_cli, shared

AI = shared("ai_generated")

# the generator each file came from, as its folder or name says (None: not said)
_BY_NAME = [("comfyui", "comfyui"), ("comfy", "comfyui"), ("forge", "a1111"),
            ("reforge", "a1111"), ("sd-next", "a1111"), ("sd-webui", "a1111"),
            ("automatic1111", "a1111"), ("invokeai", "invokeai"), ("novelai", "novelai"),
            ("fooocus", "fooocus"), ("swarmui", "swarmui"), ("stability-matrix", "stability-matrix"),
            ("tensorart", "tensorart"), ("civitai", "civitai"), ("chatgpt", "c2pa"),
            ("gemini", "c2pa")]
CONTROLS = {"sd-metadata/jpg/empty.jpg", "sd-metadata/jpg/gimp.jpg", "sd-metadata/png/gimp.png",
            "sd-metadata/webp/gimp.webp"}


def expected_source(rel: str) -> str | None:
    if rel in CONTROLS:
        return "none"
    low = rel.lower()
    for word, source in _BY_NAME:
        if word in low:
            return source
    return None


def _files():
    return sorted(p for p in AI.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))


def _meta(path: Path) -> dict:
    from alice_gpu.decode import decode_path

    d = decode_path(str(path), 32)
    assert d.status == "ok", (path, d.error)
    return d.meta


@pytest.fixture(scope="module")
def parsed():
    return {str(p.relative_to(AI)): _meta(p) for p in _files()}


def test_ai_source_is_right_for_files_whose_generator_is_known(parsed):
    known = {rel: expected_source(rel) for rel in parsed if expected_source(rel)}
    right = [rel for rel, want in known.items() if parsed[rel]["ai_source"] == want]
    wrong = {rel: parsed[rel]["ai_source"] for rel in known if rel not in right}
    assert len(known) >= 55
    assert len(right) / len(known) >= 0.95, wrong


def test_a_prompt_is_found_for_generated_files_that_carry_one(parsed):
    carrying = [rel for rel, m in parsed.items() if m["ai_source"] not in ("none", "c2pa")]
    found = [rel for rel in carrying if parsed[rel]["prompt"]]
    assert len(carrying) >= 60
    assert len(found) / len(carrying) >= 0.90, sorted(set(carrying) - set(found))


# one file per generator, its values pinned
PINS = [
    ("sd-parsers/AUTOMATIC1111/automatic1111_cropped.png", "a1111", "photo of a duck", 235284042,
     15, "realistic_realisticVision"),
    ("sd-parsers/AUTOMATIC1111/automatic1111_stealth.png", "a1111", "a circle", 2015833630, 20,
     "realisticVisionV51_v51VAE"),
    ("sd-metadata/jpg/reforge.jpeg", "a1111", "general, masterpiece", 584157617, 20,
     "waiIllustriousSDXL_v160"),
    ("comfyui_examples/sdxl/sdxl_simple_example.png", "comfyui", "evening sunset scenery",
     721897303308196, 25, "sd_xl_base_1.0"),
    ("comfyui_examples/mochi/mochi_simple_checkpoint.webp", "comfyui", "fast driving",
     93806664037998, 30, "mochi_preview"),
    ("sd-metadata/jpg/comfyui-saveimage-plus.jpg", "comfyui", "general, masterpiece",
     577723948579568, 20, "waiIllustriousSDXL_v160"),
    ("sd-parsers/InvokeAI/invokeai_dream1.png", "invokeai", "professional full body photo",
     2980747362, 50, None),
    ("sd-parsers/InvokeAI/invokeai_imeta1.png", "invokeai", "digital artwork, oil painting",
     3293022630, 35, "juggernautXL"),
    ("sd-parsers/NovelAI/novelai1_cropped.png", "novelai", "masterpiece, best quality", 2253955223,
     50, None),
    ("sd-parsers/Fooocus/fooocus1_cropped.png", "fooocus", "a smiling goldfish",
     6952411511246972928, 30, "juggernautXL_v8Rundiffusion"),
    ("sd-metadata/png/swarmui.png", "swarmui", "general, masterpiece", 2083100758, 20,
     "waiIllustriousSDXL_v160"),
    ("sd-metadata/jpg/swarmui.jpg", "swarmui", "general, masterpiece", 697543491, 20,
     "waiIllustriousSDXL_v160"),
    ("sd-metadata/png/stability-matrix.png", "stability-matrix", "general, masterpiece",
     395309383, 20, "waiIllustriousSDXL_v160"),
    ("sd-metadata/png/tensorart.png", "tensorart", "general, masterpiece", -1, 25, "WAI"),
    ("sd-metadata/jpg/civitai.jpeg", "civitai", "general, masterpiece", 1311178179, 25, None),
    ("dataset-tools/w1z_m4ch1n4__gentleman_cyborg_robot_with_a_fish_bowl_head__with_a_small_"
     "goldfish_2050777441.png", "drawthings", "w1z_m4ch1n4. gentleman cyborg", 2050777441, 26,
     "flux_1_dev"),
]


@pytest.mark.parametrize("rel, source, prompt, seed, steps, model", PINS,
                         ids=[p[0].rsplit("/", 1)[1][:30] for p in PINS])
def test_generation_values_are_pinned(parsed, rel, source, prompt, seed, steps, model):
    m = parsed[rel]
    assert m["ai_source"] == source
    assert m["prompt"].startswith(prompt), m["prompt"][:80]
    assert m["seed"] == seed and m["steps"] == steps
    if model is not None:
        assert m["ai_model"].startswith(model), m["ai_model"]
    assert json.loads(m["ai_meta"])                     # the raw blocks are kept


def test_c2pa_manifests_are_found_by_raw_parsing(parsed):
    for rel in ("sd-metadata/c2pa/png/chatgpt-image2.png", "sd-metadata/c2pa/png/gemini_3.1pro.png",
                "dataset-tools/_24ce8885-24e4-45a7-a82d-1146cfc5690d.jpg"):
        assert parsed[rel]["ai_source"] == "c2pa", rel


def test_lying_extensions_are_read_by_content(parsed):
    from alice_gpu.decode import decode_path

    d = decode_path(str(AI / "dataset-tools" / "dfd29e0c-7819-4ad9-9d55-5bc3c3acf437.jpeg"), 32)
    assert d.format == "PNG" and d.meta["ai_source"] == "comfyui" and d.meta["prompt"]


def test_comfyui_prompt_follows_the_graph_not_the_first_string():
    graph = {
        "1": {"class_type": "CLIPTextEncode", "inputs": {"text": "ugly, blurry", "clip": ["9", 1]}},
        "2": {"class_type": "Note", "inputs": {"text": "remember to buy milk"}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"text": ["6", 0], "clip": ["9", 1]}},
        "6": {"class_type": "PrimitiveStringMultiline", "inputs": {"value": "a red fox in snow"}},
        "7": {"class_type": "ControlNetApply", "inputs": {"conditioning": ["5", 0],
                                                          "control_net": ["8", 0]}},
        "9": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "fox.safetensors"}},
        "12": {"class_type": "KSampler", "inputs": {"seed": ["13", 0], "steps": 30, "cfg": 6.5,
                                                    "sampler_name": "euler", "model": ["9", 0],
                                                    "positive": ["7", 0], "negative": ["1", 0]}},
        "13": {"class_type": "PrimitiveInt", "inputs": {"value": 42}},
    }
    got = parse_comfy(graph)
    assert got["prompt"] == "a red fox in snow" and got["negative_prompt"] == "ugly, blurry"
    assert (got["seed"], got["steps"], got["cfg"], got["ai_model"]) == (42, 30, 6.5,
                                                                       "fox.safetensors")


def test_user_comment_in_both_byte_orders():
    text = "a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 5, Model: m"
    for enc in ("utf-16-be", "utf-16-le"):
        raw = b"UNICODE\x00" + text.encode(enc)
        assert user_comment(raw) == text
        got = parse_generation({}, {"user_comment": user_comment(raw)}, None, False)
        assert got["ai_source"] == "a1111" and got["prompt"] == "a cat" and got["seed"] == 5


def _png_with(chunks: list[tuple[bytes, bytes]]) -> bytes:
    from io import BytesIO

    from PIL import Image

    buf = BytesIO()
    Image.new("RGB", (4, 4), (9, 9, 9)).save(buf, "PNG")
    data = buf.getvalue()
    iend = data.rindex(b"IEND") - 4
    extra = b"".join(struct.pack(">I", len(body)) + kind + body
                     + struct.pack(">I", zlib.crc32(kind + body)) for kind, body in chunks)
    return data[:iend] + extra + data[iend:]


def test_png_text_chunks_of_every_kind():
    params = b"a lighthouse\nNegative prompt: fog\nSteps: 12, Sampler: DDIM, Seed: 7, Model: x"
    for kind, body in [(b"tEXt", b"parameters\x00" + params),
                       (b"zTXt", b"parameters\x00\x00" + zlib.compress(params)),
                       (b"iTXt", b"parameters\x00\x01\x00\x00\x00" + zlib.compress(params))]:
        m = extract(_png_with([(kind, body)]))
        assert (m["ai_source"], m["prompt"], m["negative_prompt"], m["seed"]) == (
            "a1111", "a lighthouse", "fog", 7), kind


def test_photo_facts_and_gps_opt_out():
    pug = shared("modern_formats") / "heic" / "pug.heic"
    from alice_gpu.decode import DecodePlan, decode_files
    from alice_gpu.records import FileEntry

    entry = FileEntry(str(pug), 0, 0)
    with_gps, = decode_files([entry], DecodePlan(32))
    assert with_gps.meta["camera_model"] == "iPhone 13 Pro"
    assert with_gps.meta["taken_at"].startswith("2023-02-21T14:33:08")
    assert round(with_gps.meta["gps_lat"], 3) == 44.850
    without, = decode_files([entry], DecodePlan(32, gps=False))
    assert without.meta["gps_lat"] is None and without.meta["camera_model"] == "iPhone 13 Pro"


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    root = tmp_path_factory.mktemp("meta")
    media = root / "media"
    shutil.copytree(AI, media / "ai", ignore=shutil.ignore_patterns("*.csv", "*.md"))
    shutil.copytree(shared("modern_formats") / "heic", media / "phone")
    code, _, err = run_cli("index", media, "--db", root / "db", "--no-embed")
    assert code == 1, err                           # the broken HEICs are failures, the rest OK
    return media, root / "db"


def test_find_source_comfyui_returns_exactly_the_comfyui_files(library):
    media, db = library
    code, out, _ = run_cli("find", "--source", "comfyui", "--db", db, "--json")
    got = {Path(r["path"]).relative_to(media / "ai").as_posix() for r in json.loads(out)["results"]}
    named = {str(p.relative_to(AI).as_posix()) for p in _files()
             if expected_source(str(p.relative_to(AI))) == "comfyui"}
    # and the two whose names do not say so but whose metadata is a ComfyUI graph
    unnamed = {"dataset-tools/dfd29e0c-7819-4ad9-9d55-5bc3c3acf437.jpeg", "sd-metadata/png/krea2.png"}
    assert code == 0 and got == named | unnamed


def test_find_document_and_filters(library):
    media, db = library
    code, out, _ = run_cli("find", "--camera", "iphone", "--db", db, "--json")
    results = json.loads(out)["results"]
    assert code == 0 and {Path(r["path"]).name for r in results} == {"pug.heic", "arrow.heic"}
    r = results[0]
    assert {"path", "ai_source", "prompt", "tags", "taken_at", "camera", "phash", "dhash", "ahash",
            "whash"} <= set(r)
    shown = json.loads(run_cli("show", r["path"], "--db", db, "--json")[1])
    assert re.fullmatch(r"[0-9a-f]{16}", r["phash"]) and r["phash"] == shown["phash"]
    assert [r[h] for h in ("ahash", "dhash", "whash")] == [shown[h] for h in
                                                          ("ahash", "dhash", "whash")]
    code, out, _ = run_cli("find", "--prompt", "HATSUNE miku", "--source", "novelai", "--db", db,
                           "--json")
    assert code == 0 and len(json.loads(out)["results"]) == 3
    code, out, _ = run_cli("find", "--since", "2023-01-01", "--until", "2023-02-21",
                           "--format", "heic", "--db", db, "--json")
    assert {Path(r["path"]).name for r in json.loads(out)["results"]} == {"pug.heic"}
    code, out, _ = run_cli("find", "--db", db, "--json")
    assert len(json.loads(out)["results"]) == len(list(p for p in media.rglob("*") if p.is_file()))
    assert run_cli("find", "--since", "last week", "--db", db)[0] == 2


def test_tags_in_bulk_and_find_tag_reflects_them(library):
    media, db = library
    code, out, _ = run_cli("tag", "add", "keep", media / "phone", "--db", db, "--json")
    assert code == 0 and json.loads(out)["added"] == 12
    code, out, _ = run_cli("tag", "add", "keep", "--source", "comfyui", "--db", db, "--json")
    assert json.loads(out)["added"] == 31
    code, out, _ = run_cli("tag", "remove", "keep", media / "phone" / "pug.heic", "--db", db,
                           "--json")
    assert json.loads(out)["removed"] == 1
    code, out, _ = run_cli("find", "--tag", "keep", "--db", db, "--json")
    names = {Path(r["path"]).name for r in json.loads(out)["results"]}
    assert len(names) == 42 and "pug.heic" not in names and "arrow.heic" in names
    code, out, _ = run_cli("tag", "list", "--db", db, "--json")
    assert {"tag": "keep", "files": 42} in json.loads(out)["tags"]
    code, out, _ = run_cli("show", media / "phone" / "arrow.heic", "--db", db, "--json")
    doc = json.loads(out)
    assert doc["tags"] == ["keep"] and doc["camera_model"] == "iPhone 8 Plus"
    assert run_cli("tag", "remove", "keep", "--source", "comfyui", "--db", db)[0] == 0
    assert run_cli("tag", "add", "x", "--db", db)[0] == 2        # no files and no filters


def test_find_show_tag_stats_never_import_torch(library):
    import subprocess
    import sys

    media, db = library
    code = ("import sys\nfrom alice_gpu.cli import run\n"
            f"for argv in (['find', '--db', {str(db)!r}, '--source', 'comfyui'],"
            f" ['show', {str(media / 'phone' / 'pug.heic')!r}, '--db', {str(db)!r}],"
            f" ['tag', 'list', '--db', {str(db)!r}], ['stats', '--db', {str(db)!r}]):\n"
            "    assert run(argv) == 0, argv\n"
            "assert 'torch' not in sys.modules\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_similar_and_duplicates_take_the_same_filters(library):
    media, db = library
    code, out, _ = run_cli("similar", media / "phone" / "pug.heic", "--by", "phash", "--k", "50",
                           "--format", "heic", "--db", db, "--json")
    results = json.loads(out)["results"]
    assert code == 0 and results and all(Path(r["path"]).suffix in (".heic", ".hif")
                                          for r in results)
    code, out, _ = run_cli("similar", media / "phone" / "pug.heic", "--by", "phash", "--k", "5",
                           "--source", "comfyui", "--db", db, "--json")
    names = {r["path"] for r in json.loads(out)["results"]}
    assert code == 0 and len(names) == 5 and all("/ai/" in n for n in names)
    # the same picture in 3 formats (gimp.png/.jpg/.webp): found, and gone when filtered out
    code, out, _ = run_cli("duplicates", "--in", media / "ai" / "sd-metadata", "--db", db, "--json")
    groups = json.loads(out)["groups"]
    assert any({Path(f["path"]).name for f in g["files"]} >= {"gimp.png", "gimp.jpg"}
               for g in groups)
    pngs = {r["path"] for r in json.loads(run_cli("find", "--format", "png", "--db", db,
                                                  "--json")[1])["results"]}
    code, out, _ = run_cli("duplicates", "--format", "png", "--db", db, "--json")
    assert code == 0
    for g in json.loads(out)["groups"]:
        assert {f["path"] for f in g["files"]} <= pngs


@pytest.mark.parametrize("rel, positive, negative", [
    ("comfyui_examples/flux/flux_depth_lora_example.png", "a photograph of a shark", None),
    ("comfyui_examples/wan/image_to_video_wan_example.webp", None, "node 7"),
])
def test_a_node_passing_positive_and_negative_on_gives_each_its_own_text(parsed, rel, positive,
                                                                         negative):
    """InstructPixToPixConditioning, WanImageToVideo...: the sampler's negative comes from
    the node's second output, which carries its negative input, not its positive one."""
    m = parsed[rel]
    assert m["prompt"] and m["prompt"] != m["negative_prompt"]
    if positive:
        assert m["prompt"].startswith(positive)
    if negative is None:
        assert m["negative_prompt"] is None               # the negative text is empty
    else:                                                 # the text of node 7 itself
        graph = _graph(rel)
        assert m["negative_prompt"] == graph["7"]["inputs"]["text"].strip()


def _graph(rel: str) -> dict:
    from PIL import Image

    im = Image.open(AI / rel)
    text = im.info.get("prompt")
    if text is None:                                      # ComfyUI's WebP: EXIF Make/Model
        exif = im.getexif()
        text = next(v.split(":", 1)[1] for v in exif.values()
                    if isinstance(v, str) and v.startswith("prompt:"))
    return json.loads(text)
