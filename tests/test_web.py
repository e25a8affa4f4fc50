"""`alice-gpu serve`: the JSON API and the guards of a server of someone's private photos,
tested as an attacker would: every refusal is a 4xx and changes nothing."""

from __future__ import annotations

import json
import os

from pathlib import Path

import pytest
from conftest import run_cli
from PIL import Image
from webkit import Client, free_port, library, served

from alice_gpu import open_index

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")


@pytest.fixture(scope="module")
def site(tmp_path_factory, photos):
    root = tmp_path_factory.mktemp("web")
    media = library(root, photos)
    db = root / "db"
    assert run_cli("index", media, "--db", db)[0] == 0
    with served(db, root / "aside") as (running, client):
        yield root, media, db, running, client


def _tags(client: Client, asset_id: int) -> list[str]:
    return client.json(f"/api/assets/{asset_id}")["tags"]


def test_the_api_answers_what_the_pages_show(site):
    root, media, db, running, client = site
    page = client.json("/api/assets?limit=5&sort=path&desc=false")
    assert page["total"] == 13 and len(page["items"]) == 5
    first = page["items"][0]
    assert client.json(f"/api/assets/{first['id']}")["path"] == first["path"]
    status, head, data = client.get(f"/api/assets/{first['id']}/thumb")
    assert status == 200 and head["content-type"] == "image/webp" and data[:4] == b"RIFF"
    similar = client.json(f"/api/assets/{first['id']}/similar?k=3")
    assert len(similar["results"]) == 3
    assert client.json("/api/assets?source=comfyui")["total"] == 1
    stats = client.json("/api/stats")
    assert stats["assets"] == 13 and stats["by_source"]["comfyui"] == 1
    spec = client.json("/api/openapi.json")
    assert "/api/assets/{asset_id}/thumb" in spec["paths"]
    for path in ("/", "/stats", "/search", "/duplicates", "/journals",
                 f"/assets/{first['id']}", f"/similar/{first['id']}"):
        status, head, data = client.get(path)
        assert status == 200 and b"<script>" not in data and b"style=" not in data, path
        assert "script-src 'self'" in head["content-security-policy"]
        assert head["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("path", [
    "/api/assets/..%2F..%2F..%2Fetc%2Fpasswd", "/api/assets/%2e%2e/thumb",
    "/api/assets/-1/image", "/api/assets/999999/thumb", "/api/assets/1/thumb?size=100000",
    "/api/groups/..%2F..%2Fdb", "/static/..%2F..%2F..%2Fetc%2Fpasswd",
    "/static/%2e%2e/__init__.py", "/assets/..%2Fdb", "/duplicates/..%2F..%2Fgroups.json",
    "/similar/%2e%2e%2f%2e%2e"])
def test_path_traversal_is_refused(site, path):
    _, _, _, _, client = site
    status, _, data = client.get(path)
    assert 400 <= status < 500, (status, data[:300])
    assert b"root:" not in data and b"alice_gpu" not in data


def test_journal_names_are_never_paths(site):
    root, media, db, _, client = site
    (root / "aside").mkdir(exist_ok=True)
    for name in ("..%2F..%2Fdb%2Falice.duckdb", "alice-gpu-journal-20990101-000000.jsonl",
                 "%2e%2e"):
        status, _, _ = client.post(f"/api/journals/{name}/undo")
        assert status == 404, name


def test_a_post_without_its_csrf_token_changes_nothing(site):
    _, _, _, _, client = site
    asset = client.json("/api/assets?limit=1")["items"][0]["id"]
    before = _tags(client, asset)
    status, _, _ = client.post(f"/api/assets/{asset}/tags", {"add": ["csrf"]}, csrf=False)
    assert status == 403
    status, _, _ = client.post(f"/api/assets/{asset}/tags", {"add": ["csrf"]},
                               headers={"X-CSRF-Token": "wrong"}, csrf=False)
    assert status == 403
    status, _, _ = client.post(f"/api/assets/{asset}/tags", {"add": ["csrf"]},
                               headers={"Origin": "http://evil.example"})
    assert status == 403
    assert _tags(client, asset) == before
    status, _, _ = client.post(f"/api/assets/{asset}/tags", {"add": ["ok"]})
    assert status == 200 and "ok" in _tags(client, asset)


def test_a_foreign_host_header_is_refused(site):
    _, _, _, running, client = site
    rebinding = Client(client.port, host="attacker.example:80")
    for path in ("/", "/api/stats", "/api/assets/1/thumb"):
        status, _, _ = rebinding.get(path)
        assert status == 400, path


def test_uploads_that_are_bombs_or_not_images_are_refused(site, tmp_path):
    _, _, _, _, client = site
    big = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(big)          # 400 Mpx, a few KB on disk
    status, _, data = client.upload("/api/search", "bomb.png", big.read_bytes())
    assert 400 <= status < 500 and b"decompression bomb" in data.lower(), data[:300]
    status, _, data = client.upload("/api/search", "notes.jpg", b"just some text\n" * 50)
    assert 400 <= status < 500, data[:300]
    count = client.json("/api/stats")["assets"]
    assert count == 13                                # nothing was added to the index


def test_an_uploaded_photo_finds_its_original_first(site, photos):
    _, media, _, _, client = site
    original = sorted((photos / "images").iterdir())[33]
    status, _, data = client.upload("/api/search", "query.jpg", original.read_bytes())
    assert status == 200, data[:300]
    best = json.loads(data)["results"][0]
    assert best["path"] == str(media / original.name) and best["score"] > 0.99


def test_read_only_refuses_every_action_but_search(tmp_path, photos):
    media = library(tmp_path, photos)
    assert run_cli("index", media, "--db", tmp_path / "db", "--no-embed")[0] == 0
    with served(tmp_path / "db", tmp_path / "aside", read_only=True) as (_, client):
        asset = client.json("/api/assets?limit=1")["items"][0]["id"]
        for path, payload in ((f"/api/assets/{asset}/tags", {"add": ["x"]}),
                              ("/api/groups-bulk", {"tier": "exact"}),
                              ("/api/journals/alice-gpu-journal-20990101-000000.jsonl/undo",
                               {})):
            status, _, _ = client.post(path, payload)
            assert status == 403, path
        assert "x" not in _tags(client, asset)
        original = sorted((photos / "images").iterdir())[33]
        status, _, data = client.upload("/api/search", "q.jpg", original.read_bytes())
        assert status == 200, data[:300]


def test_a_token_guards_a_server_and_is_needed_off_loopback(tmp_path, photos):
    from alice_gpu.errors import ConfigError
    from alice_gpu.web.server import start

    code, _, err = run_cli("serve", "--host", "0.0.0.0", "--db", tmp_path / "db")
    assert code == 2 and "--token" in err and err.count("\n") == 1
    with pytest.raises(ConfigError):
        start(open_index(tmp_path / "db"), "0.0.0.0", free_port(), read_only=True)
    media = library(tmp_path, photos)
    run_cli("index", media, "--db", tmp_path / "db", "--no-embed")
    with served(tmp_path / "db", tmp_path / "aside", token="s3cret", read_only=True) as (_, c):
        assert c.get("/api/stats")[0] == 401
        assert c.get("/api/stats", headers={"Authorization": "Bearer wrong"})[0] == 401
        assert c.get("/api/stats", headers={"Authorization": "Bearer s3cret"})[0] == 200
        status, head, _ = c.get("/?token=s3cret")
        assert status == 303 and "alice_gpu_token=s3cret" in head["set-cookie"]
        c.cookie = "alice_gpu_token=s3cret"
        assert c.get("/api/stats")[0] == 200


def test_serve_without_the_extra_says_how_to_install_it(monkeypatch, tmp_path):
    import builtins

    real_import = builtins.__import__

    def no_fastapi(name, *args, **kwargs):
        if name.split(".")[0] in ("fastapi", "uvicorn"):
            raise ImportError(f"no {name} here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_fastapi)
    code, _, err = run_cli("serve", "--db", tmp_path / "db")
    assert code == 2 and "pip install 'alice-gpu[serve]'" in err
    assert run_cli("stats", "--db", tmp_path / "nope", "--json")[0] == 2   # the CLI as ever
    assert not os.path.exists(tmp_path / "db")


def test_a_port_in_use_is_one_line_and_the_index_stays_free(tmp_path, photos):
    import socket

    media = library(tmp_path, photos)
    run_cli("index", media, "--db", tmp_path / "db", "--no-embed")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        code, _, err = run_cli("serve", "--db", tmp_path / "db", "--port",
                               taken.getsockname()[1])
    assert code == 2 and "cannot listen" in err and err.count("\n") == 1, err
    assert run_cli("stats", "--db", tmp_path / "db", "--json")[0] == 0


def test_an_asset_page_answers_when_its_file_is_away(tmp_path, photos):
    """Look-alikes of an indexed file come from what the index holds: the file (on a
    drive unplugged, or a synthetic row) is not read."""
    from alice_gpu.errors import QueryError

    media = library(tmp_path, photos)
    assert run_cli("index", media, "--db", tmp_path / "db", "--no-embed")[0] == 0
    api = open_index(tmp_path / "db")
    rows = {Path(r["path"]).name: r["id"] for r in api.browse(limit=100)["items"]}
    copy = media / "phone" / "IMG_0001.jpg"
    original = sorted((photos / "images").iterdir())[30].name
    copy.unlink()
    found = api.similar_to(rows["IMG_0001.jpg"], k=2, by="phash")
    assert found.query_in_index and {Path(m.path).name for m in found.results} == {
        "IMG_0001.jpg", original}
    with pytest.raises(QueryError, match="no indexed file"):
        api.similar_to(999_999, k=2, by="phash")
    with pytest.raises(QueryError, match="no embedding"):
        api.similar_to(rows[original], k=2)
