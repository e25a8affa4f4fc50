"""`alice-gpu serve` under load, and at scale.

    python benchmarks/bench_web.py [--n 1000000] [--keep DIR [--reuse]] [--json] [--write]

1. Indexes ``photo_collection`` (462 real photos, hashes and embeddings) with the CLI;
   with ``--n`` above that, adds synthetic rows as ``bench_scale.py`` does (its own
   ``add_synthetic``: clustered embeddings, uniform hashes, planted pairs).
2. Starts ``alice-gpu serve`` as its own process and times its start: until the URL
   is printed, and until the first answer.
3. Waits for the duplicate groups the server computes in the background (timed).
4. Times, one request at a time (the latencies a person feels): a grid page of 100
   items (``/api/assets``, metadata) and the grid's HTML page; an asset page with its
   20 most similar (``/assets/ID``, and ``/api/assets/ID/similar?k=20``); the search
   by an uploaded photo; the duplicates overview from the stored groups.
5. The load test: 16 clients, 2,000 requests mixing grid pages, thumbnails (of the
   real photos; warm after the first), asset pages and similar; it stops by itself.
   Errors are any status >= 400 or a failed connection.

The server's peak RSS is its own VmHWM (``/proc/PID/status``), read before it stops;
the upload decoder runs in a child process and is reported apart.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import PHOTOS, add_synthetic  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "RESULTS.md"
BEGIN, END = "<!-- web:begin -->", "<!-- web:end -->"
EXE = shutil.which("alice-gpu") or os.path.join(os.path.dirname(sys.executable), "alice-gpu")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Http:
    def __init__(self, port: int):
        self.port = port
        self.csrf = json.loads(self.get("/api/session")[1])["csrf"]

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict | None = None) -> tuple[int, bytes]:
        con = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        con.request(method, path, body=body,
                    headers={"Host": f"127.0.0.1:{self.port}", **(headers or {})})
        response = con.getresponse()
        data = response.read()
        con.close()
        return response.status, data

    def get(self, path: str) -> tuple[int, bytes]:
        return self.request("GET", path)

    def upload(self, path: str, data: bytes) -> tuple[int, bytes]:
        boundary = uuid.uuid4().hex
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
                f"filename=\"q.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n").encode() + data + \
            f"\r\n--{boundary}--\r\n".encode()
        return self.request("POST", path, body, {
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            "X-CSRF-Token": self.csrf})


def timed(client: Http, path: str | list[str], times: int, *, upload: bytes | None = None
          ) -> dict:
    """``path`` (or each of a list in turn: no answer cached) asked ``times`` times in a
    row: median and p95 in ms; every answer 200."""
    laps, paths = [], [path] if isinstance(path, str) else path
    for n in range(times):
        path = paths[n % len(paths)]
        t = time.perf_counter()
        status, data = client.upload(path, upload) if upload else client.get(path)
        laps.append(time.perf_counter() - t)
        assert status == 200, (path, status, data[:300])
    laps.sort()
    return {"n": times, "p50_ms": round(1e3 * statistics.median(laps), 1),
            "p95_ms": round(1e3 * laps[max(0, int(round(0.95 * len(laps))) - 1)], 1),
            "max_ms": round(1e3 * laps[-1], 1)}


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


class Sampler(threading.Thread):
    """The server's RSS every 0.2 s, split into anonymous memory and file-backed pages
    (an mmapped vector index counts in RSS, yet is page cache the kernel can drop)."""

    FIELDS = ("VmRSS", "RssAnon", "RssFile")

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.stop, self.peak = pid, threading.Event(), dict.fromkeys(self.FIELDS, 0)

    def run(self) -> None:
        while not self.stop.wait(0.2):
            try:
                text = Path(f"/proc/{self.pid}/status").read_text()
            except OSError:
                return
            for line in text.splitlines():
                name = line.split(":")[0]
                if name in self.peak:
                    self.peak[name] = max(self.peak[name], int(line.split()[1]))

    def mib(self) -> dict:
        return {f"max_{k}_mib": round(v / 1024, 1) for k, v in self.peak.items()}


def children_rss_mib(pid: int) -> float:
    import psutil

    return round(sum(c.memory_info().rss for c in psutil.Process(pid).children(recursive=True))
                 / 2**20, 1)


def build(db: Path, n: int, seed: int) -> dict:
    base = db.parent / "photos"
    shutil.rmtree(base, ignore_errors=True)
    shutil.copytree(PHOTOS, base)
    done = subprocess.run([EXE, "index", str(base), "--db", str(db), "--json", "--progress",
                           "none"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    out = {"real": json.loads(done.stdout)["decoded"]}
    if n > out["real"]:
        out.update({k: v for k, v in add_synthetic(db, n, seed).items()
                    if isinstance(v, (int, float, str))})
    return out


def start_server(db: Path, port: int, aside: Path) -> tuple[subprocess.Popen, dict]:
    t = time.perf_counter()
    proc = subprocess.Popen([EXE, "serve", "--db", str(db), "--port", str(port), "--move-to",
                             str(aside)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    line = proc.stderr.readline()
    url_s = time.perf_counter() - t
    assert "http://" in line, line + (proc.stderr.read() if proc.poll() is not None else "")
    threading.Thread(target=proc.stderr.read, daemon=True).start()     # keep it drained
    while True:
        try:
            con = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            con.request("GET", "/api/session", headers={"Host": f"127.0.0.1:{port}"})
            if con.getresponse().status == 200:
                break
        except OSError:
            time.sleep(0.02)
        assert proc.poll() is None, "the server died"
    return proc, {"url_printed_s": round(url_s, 2),
                  "first_answer_s": round(time.perf_counter() - t, 2)}


def wait_for_groups(client: Http) -> dict:
    t = time.perf_counter()
    while True:
        doc = json.loads(client.get("/api/groups?limit=1")[1])
        if doc["state"] in ("ready", "failed"):
            return {"state": doc["state"], "waited_s": round(time.perf_counter() - t, 1),
                    "compute_s": doc.get("seconds"), "groups": doc["total"]}
        time.sleep(1)


def load(client: Http, total: int, clients: int, ids: list[int], real: list[int],
         seed: int) -> dict:
    """``total`` requests from ``clients`` threads, a mix a person's browsing makes."""
    rng = random.Random(seed)
    n = json.loads(client.get("/api/assets?limit=1")[1])["total"]
    plan = []
    for _ in range(total):
        kind = rng.choices(["grid", "thumb", "asset", "similar"], [3, 4, 1, 2])[0]
        if kind == "grid":
            sort = rng.choice(["taken", "path", "size"])
            path = f"/api/assets?limit=100&sort={sort}&offset={rng.randrange(max(1, n - 100))}"
        elif kind == "thumb":
            path = f"/api/assets/{rng.choice(real)}/thumb"
        elif kind == "asset":
            path = f"/assets/{rng.choice(ids)}"
        else:
            path = f"/api/assets/{rng.choice(ids)}/similar?k=20"
        plan.append((kind, path))

    def one(item):
        t = time.perf_counter()
        try:
            status, _ = client.get(item[1])
        except OSError as exc:
            status = repr(exc)
        return item[0], status, time.perf_counter() - t

    t = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        done = list(pool.map(one, plan))
    wall = time.perf_counter() - t
    lat = sorted(d[2] for d in done)
    errors = [d for d in done if not (isinstance(d[1], int) and d[1] < 400)]
    by_kind = {}
    for kind in ("grid", "thumb", "asset", "similar"):
        k = sorted(d[2] for d in done if d[0] == kind)
        by_kind[kind] = {"n": len(k), "p50_ms": round(1e3 * statistics.median(k), 1),
                         "p95_ms": round(1e3 * k[int(0.95 * (len(k) - 1))], 1)}
    return {"requests": total, "clients": clients, "errors": len(errors),
            "error_sample": [str(e[:2]) for e in errors[:5]], "wall_s": round(wall, 1),
            "requests_per_s": round(total / wall, 1),
            "p50_ms": round(1e3 * statistics.median(lat), 1),
            "p95_ms": round(1e3 * lat[int(0.95 * (len(lat) - 1))], 1), "by_kind": by_kind}


def measure(db: Path, args) -> dict:
    port = free_port()
    aside = Path(tempfile.mkdtemp(prefix="bench-web-aside-"))
    proc, out = start_server(db, port, aside)
    out = {"start": out}
    sampler = Sampler(proc.pid)
    sampler.start()
    try:
        client = Http(port)
        out["groups"] = wait_for_groups(client)
        real = [i["id"] for i in json.loads(client.get(
            f"/api/assets?folder={db.parent / 'photos'}&limit=1000")[1])["items"]]
        total = json.loads(client.get("/api/assets?limit=1")[1])["total"]
        rng = random.Random(args.seed)
        ids = list(real)
        for _ in range(20):                              # files from all over the index
            page = json.loads(client.get(f"/api/assets?limit=10&sort=path&offset="
                                         f"{rng.randrange(max(1, total - 10))}")[1])
            ids += [i["id"] for i in page["items"]]
        for i in real:                                   # thumbnails warm
            client.get(f"/api/assets/{i}/thumb")
        client.get(f"/api/assets/{real[0]}/similar?k=20")   # the vector index loaded
        photo = (sorted(PHOTOS.iterdir())[-1]).read_bytes()
        out["single"] = {
            "grid_api_100": timed(client, [f"/api/assets?limit=100&sort=taken&offset={o}"
                                           for o in range(0, 3000, 100)], 30),
            "grid_api_100_deep": timed(client, f"/api/assets?limit=100&sort=path&offset="
                                               f"{total // 2}", 30),
            "grid_page_html": timed(client, "/", 30),
            "asset_page_html": timed(client, [f"/assets/{i}" for i in ids[-20:]], 20),
            "similar_20_api": timed(client, [f"/api/assets/{i}/similar?k=20"
                                             for i in ids[-40:-20]], 20),
            "upload_similar": timed(client, "/api/search?k=20", 10, upload=photo),
            "duplicates_overview_html": timed(client, "/duplicates", 20),
            "groups_api": timed(client, "/api/groups?limit=25", 20)}
        out["load"] = load(client, args.requests, args.clients, ids, real, args.seed)
        out["server_peak_rss_mib"] = peak_rss_mib(proc.pid)
        sampler.stop.set()
        out["server_rss_sampled"] = sampler.mib()
        out["server_rss_end_mib"] = round(int(next(
            ln.split()[1] for ln in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
            if ln.startswith("VmRSS:"))) / 1024, 1)
        out["children_rss_mib"] = children_rss_mib(proc.pid)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(aside, ignore_errors=True)
    out["server_exit"] = proc.returncode
    return out


def write_results(doc: dict) -> None:
    text = RESULTS.read_text()
    block = (f"{BEGIN}\n```json\n{json.dumps(doc, indent=1)}\n```\n{END}")
    key = f"<!-- web:{doc['n']} -->"
    section = f"{key}\n{block.replace(BEGIN, '').replace(END, '').strip()}\n{key}"
    if key in text:
        head, _, rest = text.partition(key)
        _, _, tail = rest.partition(key)
        text = head + section + tail
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    RESULTS.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=0, help="assets in the index (0: the photos only)")
    ap.add_argument("--keep", type=Path, help="build the index folder here and leave it")
    ap.add_argument("--reuse", action="store_true", help="--keep DIR holds one already")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--write", action="store_true", help="record the figures in RESULTS.md")
    args = ap.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-web-"))
    db = root / "db"
    doc = {"n": args.n, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
           "date": dt.date.today().isoformat(), "synthetic": args.n > 0}
    if not (args.reuse and db.exists()):
        shutil.rmtree(db, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        doc["built"] = build(db, args.n, args.seed)
        doc["built"]["seconds"] = round(time.perf_counter() - t, 1)
    doc.update(measure(db, args))
    print(json.dumps(doc, indent=1) if args.json else json.dumps(doc))
    if args.write:
        write_results(doc)
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
