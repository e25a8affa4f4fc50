"""What the web tests share: a small library with known duplicates, a server on a free
loopback port, and an HTTP client that sends what a browser (or an attacker) sends."""

from __future__ import annotations

import http.client
import json
import shutil
import socket
import uuid
from contextlib import contextmanager
from pathlib import Path

from PIL import Image, PngImagePlugin

from alice_gpu import open_index


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def library(root: Path, photos: Path) -> Path:
    """Ten photos, an exact copy, a rotated copy, and a ComfyUI-looking PNG."""
    media = root / "media"
    (media / "phone").mkdir(parents=True)
    srcs = sorted((photos / "images").iterdir())[30:40]
    for src in srcs:
        shutil.copy2(src, media / src.name)
    shutil.copy2(srcs[0], media / "phone" / "IMG_0001.jpg")
    Image.open(srcs[1]).rotate(90, expand=True).save(media / "phone" / "IMG_0002.jpg",
                                                      quality=90)
    info = PngImagePlugin.PngInfo()
    info.add_text("prompt", json.dumps({"3": {"class_type": "KSampler", "inputs": {
        "seed": 1, "steps": 20, "positive": ["6", 0], "negative": ["7", 0]}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox in snow"}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry"}}}))
    Image.new("RGB", (96, 96), (200, 90, 40)).save(media / "fox.png", pnginfo=info)
    return media


class Client:
    """HTTP to the server as a browser (or an attacker) sends it."""

    def __init__(self, port: int, host: str | None = None):
        self.port, self.host = port, host or f"127.0.0.1:{port}"
        self.csrf: str | None = None
        self.cookie: str | None = None

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict | None = None) -> tuple[int, dict, bytes]:
        con = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        head = {"Host": self.host, **(headers or {})}
        if self.cookie:
            head["Cookie"] = self.cookie
        con.request(method, path, body=body, headers=head)
        response = con.getresponse()
        data = response.read()
        con.close()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data

    def get(self, path: str, **kw) -> tuple[int, dict, bytes]:
        return self.request("GET", path, **kw)

    def json(self, path: str) -> dict:
        status, _, data = self.get(path)
        assert status == 200, (path, status, data[:500])
        return json.loads(data)

    def post(self, path: str, payload=None, csrf: bool = True, headers: dict | None = None
             ) -> tuple[int, dict, bytes]:
        head = {"Content-Type": "application/json", **(headers or {})}
        if csrf:
            self.csrf = self.csrf or self.json("/api/session")["csrf"]
            head["X-CSRF-Token"] = self.csrf
        return self.request("POST", path, json.dumps(payload or {}).encode(), head)

    def upload(self, path: str, name: str, data: bytes, csrf: bool = True):
        boundary = uuid.uuid4().hex
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
                f"filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                ).encode() + data + f"\r\n--{boundary}--\r\n".encode()
        head = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        if csrf:
            self.csrf = self.csrf or self.json("/api/session")["csrf"]
            head["X-CSRF-Token"] = self.csrf
        return self.request("POST", path, body, head)


@contextmanager
def served(db: Path, move_to: Path, **options):
    from alice_gpu.web.server import start

    port = free_port()
    running = start(open_index(db), "127.0.0.1", port, move_to=move_to, **options)
    running.in_background()
    try:
        yield running, Client(port)
    finally:
        running.stop()
