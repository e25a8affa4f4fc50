"""Actions, report: duplicate groups as one self-contained HTML page.

Thumbnails are embedded as ``data:`` URIs, so the page can be mailed or opened
offline; every file name is HTML-escaped. A file that cannot be previewed gets
a line saying why instead of an image.
"""

from __future__ import annotations

import base64
import html
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..decode.thumbs import render_file
from . import human_bytes
from ..errors import QueryError

log = logging.getLogger(__name__)

THUMB = 200     # px, the long side of a thumbnail


def thumbnail(path: str, size: int = THUMB) -> tuple[str | None, str | None]:
    """(data URI of an upright JPEG thumbnail, None), or (None, why there is none)."""
    try:
        jpeg = render_file(path, size, "JPEG")    # a video: its poster frame
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a line in the page
        return None, f"no preview ({type(exc).__name__})"
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii"), None


def _shown(path: str) -> str:
    """A file name as text: bytes that are not UTF-8 become U+FFFD, not broken HTML."""
    return os.fsencode(path).decode("utf-8", "replace")


_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em} section{background:#fff;border:1px solid #ddd;border-radius:6px;
margin:1em 0;padding:.8em} h2{font-size:1.05em;margin:.2em 0 .6em}
.files{display:flex;flex-wrap:wrap;gap:12px} figure{margin:0;width:220px;border:2px solid #eee;
border-radius:4px;padding:6px} figure.keep{border-color:#2a7} figcaption{word-break:break-all;
font-size:12px} .tier{font-weight:600} .badge{background:#2a7;color:#fff;border-radius:3px;
padding:0 4px;font-size:11px} .exact{color:#06c} .near{color:#2a7} .edited{color:#c70}
.similar{color:#888} img{display:block;max-width:200px;max-height:200px;margin:auto}
.nopreview{height:60px;color:#a00;font-size:12px}
"""


def render(result, thumbs: dict[str, tuple[str | None, str | None]]) -> str:
    """The page for a :class:`~alice_gpu.search.queries.DuplicatesResult`."""
    e = html.escape
    files = sum(len(g.files) for g in result.groups)
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             "<title>alice-gpu duplicates</title>", f"<style>{_STYLE}</style></head><body>",
             "<h1>alice-gpu duplicates</h1>",
             f"<p>{len(result.groups)} groups, {files} files; by {e(result.by)}"
             f" ({e(', '.join(result.tiers))}); made {e(time.strftime('%Y-%m-%d %H:%M'))}</p>"]
    for n, group in enumerate(result.groups, 1):
        parts.append(f'<section id="group-{n}"><h2>Group {n}: {len(group.files)} files, '
                     f'<span class="tier {e(group.tier or "")}">{e(group.tier or "")}</span>'
                     f' &middot; keep: {e(group.keeper_reason)}</h2><div class="files">')
        for f in group.files:
            keep = f.path == group.keeper
            uri, why = thumbs.get(f.path, (None, "no preview"))
            img = (f'<img src="{uri}" alt="{e(os.path.basename(_shown(f.path)))}">' if uri else
                   f'<div class="nopreview">{e(why or "")}</div>')
            if keep:
                how = '<span class="badge">KEEP</span>'
            else:
                how = (f'<span class="tier {e(f.tier or "")}">{e(f.tier or "")}</span> '
                       f'{f.score:.3f}' + (f" &middot; {e(f.transform)}" if f.transform else "")
                       + _evidence(f))
            dims = f"{f.width}&times;{f.height}" if f.width else "?"
            parts.append(f'<figure class="{"keep" if keep else "member"}">{img}<figcaption>'
                         f'{how}<br>{dims} &middot; {human_bytes(f.size)}<br>'
                         f'<span class="path">{e(_shown(f.path))}</span></figcaption></figure>')
        parts.append("</div></section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _evidence(f) -> str:
    """A member's check against the keeper: the edit, or why it is no copy."""
    ev = f.evidence
    if not ev:
        return ""
    if ev.get("verified"):
        what = (f"{ev['inliers']} matching features" if ev.get("method") == "keypoints"
                else "same pixels")
        return (f'<br><span class="evidence">{html.escape(f.edit)} &middot; {what}, '
                f'residual {ev.get("residual", 0):.1f}</span>')
    return f'<br><span class="evidence">{html.escape(ev.get("reason") or "")}</span>'


def write_html(result, path: str | os.PathLike[str], workers: int | None = None) -> Path:
    """Write the page (atomically) and return its path."""
    out = Path(os.path.expanduser(os.fspath(path)))
    paths = sorted({f.path for g in result.groups for f in g.files})
    with ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1)) as pool:
        thumbs = dict(zip(paths, pool.map(thumbnail, paths)))
    # a name that is not UTF-8 (surrogate-escaped bytes) shows U+FFFD, never breaks the page
    page = render(result, thumbs).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, out)
    except OSError as exc:
        raise QueryError(f"cannot write {path}: {exc.strerror}") from None
    return out
