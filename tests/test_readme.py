"""The README's commands work as printed: every `alice-gpu ...` line of its shell blocks is
run, in order, on a small folder (its paths substituted), and must succeed."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from conftest import REPO, run_cli


def readme_commands() -> list[str]:
    """The `alice-gpu` lines of the README's ```bash blocks, comments dropped."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.splitlines():
            line = line.split("  #", 1)[0].strip()
            if line.startswith("alice-gpu "):
                lines.append(line)
    return lines


def test_the_readme_shows_the_main_job():
    commands = readme_commands()
    for verb in ("index", "similar", "duplicates", "undo", "find", "stats"):
        assert any(c.split()[1] == verb for c in commands), verb


def test_every_readme_command_runs_as_printed(tmp_path, photos):
    media, dups = tmp_path / "media", tmp_path / "dups"
    (media / "2024").mkdir(parents=True)
    srcs = sorted((photos / "images").iterdir())[:4]
    for src in srcs:
        shutil.copy2(src, media / "2024" / src.name)
    shutil.copy2(srcs[0], media / "2024" / "cat.jpg")                     # a copy
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a cat on a sofa\nSteps: 20, Sampler: Euler a, Seed: 7")
    Image.new("RGB", (64, 64), (200, 120, 40)).save(media / "made.png", pnginfo=info)
    for line in readme_commands():
        line = line.replace("~/media", str(media)).replace("~/dups", str(dups)) \
            .replace("~/sorted", str(tmp_path / "sorted"))
        if "JOURNAL" in line:
            journal = sorted([*dups.glob("alice-gpu-journal-*.jsonl"),
                              *(tmp_path / "sorted").glob("alice-gpu-journal-*.jsonl")],
                             key=lambda p: p.stat().st_mtime_ns)[-1]
            line = line.replace("JOURNAL", shlex.quote(str(journal)))
        args = shlex.split(line)[1:]
        if args[0] == "serve":
            _serves(args)
            continue
        code, out, err = run_cli(*args)
        assert code == 0, (line, err[-2000:])
        if args[:2] == ["find", "--prompt"]:
            assert [Path(r["path"]).name for r in json.loads(out)["results"]] == ["made.png"]


def _serves(args: list[str]) -> None:
    """`serve` as printed, in its own process (a browser "opened" by $BROWSER=true):
    it prints its URL, answers, and stops with Ctrl-C, exit 0."""
    import http.client
    import os
    import signal
    import subprocess
    import sys
    import threading

    exe = shutil.which("alice-gpu") or os.path.join(os.path.dirname(sys.executable),
                                                     "alice-gpu")
    proc = subprocess.Popen([exe, *args], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "BROWSER": "true"})
    try:
        line = proc.stderr.readline()
        if "cannot listen" in line:
            pytest.skip(f"the README's port is in use on this machine: {line.strip()}")
        url = re.search(r"http://([^/]+)/", line)
        assert url, line
        while True:
            try:
                con = http.client.HTTPConnection(url.group(1), timeout=60)
                con.request("GET", "/api/stats")
                assert con.getresponse().status == 200
                break
            except ConnectionRefusedError:       # it listens a moment after the URL
                assert proc.poll() is None, proc.stderr.read()
                threading.Event().wait(0.05)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    assert proc.returncode == 0
