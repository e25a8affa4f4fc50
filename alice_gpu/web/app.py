"""Web, the app: the pages (Jinja2, rendered on the server, one vendored-free script) over
the same calls as the JSON API (:mod:`.routes`).

Pages: the grid (``/``, the ``find`` filters, sorted, paged), an asset (``/assets/ID``:
the picture, its metadata, editable tags, its most similar), similar (``/similar/ID``),
search by image (``/search``), duplicates (``/duplicates``: the groups' overview and
bulk actions per tier; ``/duplicates/GID``: one group, keyboard first), journals
(``/journals``: undo) and stats (``/stats``: charts drawn in SVG on the server).
"""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING, Any, Optional
from urllib.parse import urlencode

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from .charts import bars
from .groups import reclaim
from .routes import TIERS, answer, filters_from, record_json, router
from .security import Guard, allowed_hosts

if TYPE_CHECKING:
    from .server import WebState

PAGE = 60                     # tiles on a grid page
GROUPS_PAGE = 25


def create_app(state: "WebState", host: str = "127.0.0.1", port: int = 8765) -> FastAPI:
    app = FastAPI(title="alice-gpu", openapi_url="/api/openapi.json", docs_url=None,
                  redoc_url=None, version="1")
    app.middleware("http")(Guard(allowed_hosts(host, port), state.csrf, state.token,
                                 state.read_only))
    app.include_router(router(state))
    folder = resources.files("alice_gpu.web")
    app.mount("/static", StaticFiles(directory=str(folder / "static")), name="static")
    templates = Jinja2Templates(directory=str(folder / "templates"))
    templates.env.globals.update(csrf=state.csrf, read_only=state.read_only,
                                 human=human_bytes)

    @app.exception_handler(HTTPException)
    async def refused(request: Request, exc: HTTPException):
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)
        return templates.TemplateResponse(request, "error.html", {"message": exc.detail},
                                          status_code=exc.status_code)

    _pages(app, state, templates)
    _duplicate_pages(app, state, templates)
    return app


def _pages(app: FastAPI, state: "WebState", templates: Jinja2Templates) -> None:
    idx = state.api

    @app.get("/", response_class=HTMLResponse)
    def grid(request: Request, sort: str = "taken", desc: bool = True,
             page: int = Query(1, ge=1), failed: bool = False, source: Optional[str] = None,
             prompt: Optional[str] = None, camera: Optional[str] = None,
             since: Optional[str] = None, until: Optional[str] = None,
             folder: Optional[str] = None, format: Optional[str] = None,
             model: Optional[str] = None, tag: Optional[str] = None):
        chosen = filters_from(source, prompt, camera, since, until, folder, format, model,
                              [tag] if tag else [])
        result = answer(idx.browse, chosen, sort=sort, descending=desc,
                        offset=(page - 1) * PAGE, limit=PAGE, failed=failed)
        for item in result["items"]:
            item["taken_at"] = item["taken_at"].isoformat() if item.get("taken_at") else ""
        params = {k: v for k, v in request.query_params.items() if k != "page" and v}
        return templates.TemplateResponse(request, "grid.html", {
            "page": page, "pages": max(1, -(-result["total"] // PAGE)), "result": result,
            "query": dict(request.query_params), "link": lambda p: "/?" + urlencode(
                {**params, "page": p}), "sort": sort, "desc": desc, "failed": failed})

    @app.get("/assets/{asset_id}", response_class=HTMLResponse)
    def asset(request: Request, asset_id: int):
        row = record_json(answer(idx.asset, asset_id))
        by = "embedding" if row.get("embedded") else "phash"
        similar = [m for m in answer(idx.similar_to, row["id"], k=21, by=by).results
                   if m.id != asset_id][:20]
        return templates.TemplateResponse(request, "asset.html", {
            "row": row, "similar": similar, "by": by,
            "meta": [(k, row.get(k)) for k in META_SHOWN if row.get(k) not in (None, "", [])]})

    @app.get("/similar/{asset_id}", response_class=HTMLResponse)
    def similar(request: Request, asset_id: int, k: int = Query(60, ge=1, le=200)):
        row = answer(idx.asset, asset_id)
        by = "embedding" if row.get("embedded") else "phash"
        result = answer(idx.similar_to, row["id"], k=k, by=by)
        return templates.TemplateResponse(request, "similar.html",
                                          {"row": row, "result": result, "by": by})

    @app.get("/search", response_class=HTMLResponse)
    def search(request: Request):
        return templates.TemplateResponse(request, "search.html", {})

    @app.get("/stats", response_class=HTMLResponse)
    def stats(request: Request):
        info = answer(idx.stats)
        years = {k: v for k, v in info["by_year"].items()}
        charts = [bars("Files by format", info["formats"]),
                  bars("Files by source", info["by_source"]),
                  bars("Files by year", years, sort=False),
                  bars("Failures by reason", info["failures_by_reason"])]
        return templates.TemplateResponse(request, "stats.html",
                                          {"info": info, "charts": charts})

    @app.get("/journals", response_class=HTMLResponse)
    def journals(request: Request):
        listed = answer(idx.journals, state.move_to)
        return templates.TemplateResponse(request, "journals.html",
                                          {"journals": listed, "move_to": state.move_to})


def _duplicate_pages(app: FastAPI, state: "WebState", templates: Jinja2Templates) -> None:
    groups = state.groups

    @app.get("/duplicates", response_class=HTMLResponse)
    def overview(request: Request, page: int = Query(1, ge=1), tier: Optional[str] = None):
        groups.ensure()
        listed = [(gid, g) for gid, g in groups.listed() if tier in (None, "", g.tier)]
        shown = listed[(page - 1) * GROUPS_PAGE:page * GROUPS_PAGE]
        counts = {t: sum(1 for _, g in groups.listed() if g.tier == t) for t in TIERS}
        return templates.TemplateResponse(request, "duplicates.html", {
            "view": groups.view(), "groups": shown, "total": len(listed), "page": page,
            "pages": max(1, -(-len(listed) // GROUPS_PAGE)), "tier": tier or "",
            "counts": counts, "reclaim": reclaim,
            "keeper_id": lambda g: next(f.id for f in g.files if f.path == g.keeper),
            "move_to": state.move_to})

    @app.get("/duplicates/{gid}", response_class=HTMLResponse)
    def review(request: Request, gid: str):
        listed = groups.listed()
        at = next((k for k, (i, _) in enumerate(listed) if i == gid), None)
        if at is None:
            raise HTTPException(404, "this group was acted on, or the groups were computed "
                                     "again: go back to the overview")
        group = listed[at][1]
        files = [{**record_json(answer(state.api.asset, f.id)), "member": f,
                  "keeper": f.path == group.keeper} for f in group.files]
        rows = [(label, [fn(f) for f in files]) for label, fn in DIFF_ROWS]
        return templates.TemplateResponse(request, "group.html", {
            "gid": gid, "group": group, "files": files, "rows": rows,
            "prev": listed[at - 1][0] if at > 0 else "",
            "next": listed[at + 1][0] if at + 1 < len(listed) else "",
            "position": at + 1, "total": len(listed), "move_to": state.move_to})


META_SHOWN = ("path", "format", "width", "height", "size", "mode", "frames", "taken_at",
              "camera_make", "camera_model", "lens", "software", "gps_lat", "gps_lon",
              "ai_source", "ai_model", "prompt", "negative_prompt", "seed", "steps",
              "sampler", "cfg", "content_hash", "phash", "status", "error")

# the rows of a group's comparison: what tells its files apart
DIFF_ROWS = (
    ("pixels", lambda f: f"{f.get('width')}×{f.get('height')}"),
    ("bytes", lambda f: human_bytes(f.get("size") or 0)),
    ("format", lambda f: f.get("format") or "-"),
    ("date taken", lambda f: f.get("taken_at") or "-"),
    ("camera", lambda f: " ".join(x for x in (f.get("camera_make"), f.get("camera_model"))
                                  if x) or "-"),
    ("prompt", lambda f: (f.get("prompt") or "-")[:160]),
    ("tier", lambda f: "keeper" if f["keeper"] else (f["member"].tier or "-")),
    ("score", lambda f: "" if f["keeper"] else f"{f['member'].score:.3f}"),
    ("transform", lambda f: f["member"].transform or "-"),
    ("edit", lambda f: "" if f["keeper"] else (f["member"].edit or _why_not(f["member"]))),
)


def _why_not(member: Any) -> str:
    """Why a member that was checked is no copy (or '-' when it was not checked)."""
    ev = member.evidence or {}
    return ev.get("reason") or "-"


def human_bytes(n: Any) -> str:
    from ..actions import human_bytes as fmt

    return fmt(float(n or 0))
