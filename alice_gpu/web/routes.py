"""Web, the JSON API (``/api/...``, OpenAPI at ``/api/openapi.json``): what the pages use,
and what scripts can use. Every route calls :mod:`alice_gpu.api`; files are named by
their id in the index, groups by the id the server gave them, journals by a name the
server listed; nothing from a request is ever used as a path."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Optional

from fastapi import APIRouter, Body, File, HTTPException, Query, UploadFile
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from ..config import HASH_NAMES
from ..errors import AliceError, QueryError, QueryMemoryError, StoreLockedError
from .groups import reclaim

if TYPE_CHECKING:
    from .server import WebState

JOURNAL_NAME = re.compile(r"alice-gpu-journal-[0-9]{8}-[0-9]{6}(-[0-9]+)?\.jsonl")
TIERS = ("exact", "near", "edited", "similar")


def filters_from(source: str | None = None, prompt: str | None = None,
                 camera: str | None = None, since: str | None = None,
                 until: str | None = None, folder: str | None = None,
                 format: str | None = None, model: str | None = None,
                 tag: list[str] | None = None):
    """The ``find`` filters from a query string (empty values ignored)."""
    from ..store.filters import Filters

    def given(v: str | None) -> str | None:
        return v.strip() if v and v.strip() else None

    return Filters(tuple(t for t in tag or () if t.strip()), given(source), given(prompt),
                   given(camera), given(since), given(until), given(folder), given(format),
                   given(model))


def answer(fn, *args: Any, **kwargs: Any) -> Any:
    """Call the API; its errors become HTTP answers with the same one line."""
    try:
        return fn(*args, **kwargs)
    except QueryMemoryError as exc:
        raise HTTPException(507, str(exc)) from None
    except StoreLockedError as exc:
        raise HTTPException(409, str(exc)) from None
    except QueryError as exc:
        status = 404 if str(exc).startswith("no file with id") else 422
        raise HTTPException(status, str(exc)) from None
    except AliceError as exc:
        raise HTTPException(422, str(exc)) from None


def record_json(row: dict[str, Any]) -> dict[str, Any]:
    """An asset's record for JSON: hashes in imagehash's hex, dates as ISO text."""
    out = dict(row)
    for name in HASH_NAMES:
        if out.get(name) is not None:
            out[name] = f"{int(out[name]) & 0xFFFFFFFFFFFFFFFF:016x}"
    out["phash_orient"] = [f"{int(v) & 0xFFFFFFFFFFFFFFFF:016x}"
                           for v in out.get("phash_orient") or []]
    for key in ("taken_at", "indexed_at"):
        if out.get(key) is not None:
            out[key] = out[key].isoformat()
    return out


def router(state: "WebState") -> APIRouter:
    api = APIRouter(prefix="/api")
    idx = state.api

    @api.get("/session")
    def session() -> dict[str, Any]:
        """The CSRF token a script sends back in ``X-CSRF-Token`` with every POST."""
        return {"csrf": state.csrf, "read_only": state.read_only,
                "move_to": str(state.move_to)}

    @api.get("/stats")
    def stats() -> dict[str, Any]:
        return answer(idx.stats)

    @api.post("/search")
    async def search(file: UploadFile = File(...), k: int = Query(20, ge=1, le=200),
                     by: str = "embedding") -> dict[str, Any]:
        """Look-alikes of an uploaded image (size-capped, decoded in a worker)."""
        from ..api.media import MAX_UPLOAD

        data = await file.read(MAX_UPLOAD + 1)
        found = await run_in_threadpool(answer, idx.similar_upload, data, k=k, by=by)
        return found.to_dict()

    _asset_routes(api, state)
    _groups_routes(api, state)
    _bulk_routes(api, state)
    _journal_routes(api, state)
    return api


def _asset_routes(api: APIRouter, state: "WebState") -> None:
    idx = state.api

    @api.get("/assets")
    def assets(sort: str = "taken", desc: bool = True, offset: int = Query(0, ge=0),
               limit: int = Query(100, ge=1, le=1000), failed: bool = False,
               source: Optional[str] = None, prompt: Optional[str] = None,
               camera: Optional[str] = None, since: Optional[str] = None,
               until: Optional[str] = None, folder: Optional[str] = None,
               format: Optional[str] = None, model: Optional[str] = None,
               tag: list[str] = Query([])) -> dict[str, Any]:
        chosen = filters_from(source, prompt, camera, since, until, folder, format, model, tag)
        page = answer(idx.browse, chosen, sort=sort, descending=desc, offset=offset,
                      limit=limit, failed=failed)
        for item in page["items"]:
            if item.get("taken_at") is not None:
                item["taken_at"] = item["taken_at"].isoformat()
        return page

    @api.get("/assets/{asset_id}")
    def asset(asset_id: int) -> dict[str, Any]:
        return record_json(answer(idx.asset, asset_id))

    @api.get("/assets/{asset_id}/thumb")
    def thumb(asset_id: int, size: int = 288) -> Response:
        """A WebP thumbnail, long side 288 px (or 1024, a preview)."""
        if size not in (288, 1024):
            raise HTTPException(422, "a thumbnail is 288 or 1024 px")
        data = answer(idx.thumbnail, asset_id, size)
        return Response(data, media_type="image/webp",
                        headers={"cache-control": "private, max-age=3600"})

    @api.get("/assets/{asset_id}/image")
    def image(asset_id: int) -> Response:
        data, media = answer(idx.image, asset_id)
        return Response(data, media_type=media, headers={"cache-control": "private"})

    @api.get("/assets/{asset_id}/similar")
    def similar(asset_id: int, k: int = Query(20, ge=1, le=200),
                by: str = "embedding") -> dict[str, Any]:
        row = answer(idx.asset, asset_id)
        by = by if row.get("embedded") or by != "embedding" else "phash"
        result = answer(idx.similar_to, asset_id, k=k + 1, by=by)
        doc = result.to_dict()
        doc["results"] = [m for m in doc["results"] if m["id"] != asset_id][:k]
        return doc

    @api.post("/assets/{asset_id}/tags")
    def tags(asset_id: int, body: dict[str, list[str]] = Body(...)) -> dict[str, Any]:
        row = answer(idx.asset, asset_id)
        for name in body.get("add", []):
            answer(idx.tag, name, add=True, paths=[row["path"]])
        for name in body.get("remove", []):
            answer(idx.tag, name, add=False, paths=[row["path"]])
        return {"tags": answer(idx.asset, asset_id)["tags"]}


def _groups_routes(api: APIRouter, state: "WebState") -> None:
    idx, groups = state.api, state.groups

    def group_or_404(gid: str):
        group = groups.find(gid)
        if group is None:
            raise HTTPException(404, f"no group {gid!r} (it may have been acted on or the "
                                     f"groups recomputed: reload)")
        return group

    @api.get("/groups")
    def listing(offset: int = Query(0, ge=0), limit: int = Query(50, ge=1, le=500),
                tier: Optional[str] = None) -> dict[str, Any]:
        groups.ensure()
        listed = [(gid, g) for gid, g in groups.listed() if tier in (None, g.tier)]
        return {**groups.view(), "total": len(listed), "offset": offset,
                "groups": [_summary(gid, g) for gid, g in listed[offset:offset + limit]],
                "tiers": {t: sum(1 for _, g in groups.listed() if g.tier == t) for t in TIERS}}

    @api.get("/groups/{gid}")
    def detail(gid: str) -> dict[str, Any]:
        group = group_or_404(gid)
        files = []
        for f in group.files:
            record = record_json(answer(idx.asset, f.id))
            files.append({**record, "tier": f.tier, "score": f.score,
                          "transform": f.transform, "distance": f.distance,
                          "edit": f.edit, "evidence": f.evidence,
                          "keeper": f.path == group.keeper})
        return {**_summary(gid, group), "files": files}

    @api.post("/groups/{gid}/keeper")
    def keeper(gid: str, body: dict[str, int] = Body(...)) -> dict[str, Any]:
        group = group_or_404(gid)
        ids = [f.id for f in group.files]
        if body.get("keeper") not in ids:
            raise HTTPException(422, "the keeper must be one of the group's files")
        answer(idx.decide, "keeper", ids, keeper=body["keeper"])
        groups.reconcile()
        return {"decided": "keeper", "keeper": body["keeper"]}

    @api.post("/groups/{gid}/not-duplicates")
    def apart(gid: str) -> dict[str, Any]:
        group = group_or_404(gid)
        answer(idx.decide, "not-duplicates", [f.id for f in group.files])
        groups.reconcile()
        return {"decided": "not-duplicates"}

    @api.post("/groups/{gid}/apply")
    def apply(gid: str, body: dict[str, int] = Body(default={})) -> dict[str, Any]:
        group = group_or_404(gid)
        keep = body.get("keeper") or next(f.id for f in group.files if f.path == group.keeper)
        ids = [f.id for f in group.files]
        if keep not in ids:
            raise HTTPException(422, "the keeper must be one of the group's files")
        answer(idx.decide, "keeper", ids, keeper=keep)      # the choice outlives the move
        report = answer(idx.move_aside, [i for i in ids if i != keep], state.move_to)
        groups.reconcile()
        return report.to_dict()



def _bulk_routes(api: APIRouter, state: "WebState") -> None:
    idx, groups = state.api, state.groups

    @api.get("/decisions")
    def decisions() -> list[dict[str, Any]]:
        return answer(idx.decisions)

    @api.post("/decisions/{decision_id}/forget")
    def forget(decision_id: int) -> dict[str, Any]:
        if not answer(idx.forget_decision, decision_id):
            raise HTTPException(404, f"no decision {decision_id}")
        groups.reconcile()
        return {"forgotten": decision_id}

    @api.get("/groups-bulk")
    def bulk_preview(tier: str) -> dict[str, Any]:
        chosen = _of_tier(groups, tier)
        return {"tier": tier, "groups": len(chosen),
                "files": sum(len(g.files) - 1 for _, g in chosen),
                "bytes": sum(reclaim(g) for _, g in chosen)}

    @api.post("/groups-bulk")
    def bulk_apply(body: dict[str, str] = Body(...)) -> dict[str, Any]:
        chosen = _of_tier(groups, body.get("tier", ""))
        keepers = {g.keeper: f.id for _, g in chosen for f in g.files if f.path == g.keeper}
        answer(idx.decide_groups, "keeper",
               [[[f.id for f in g.files], keepers[g.keeper]] for _, g in chosen])
        ids = [f.id for _, g in chosen for f in g.files if f.path != g.keeper]
        report = answer(idx.move_aside, ids, state.move_to)
        groups.reconcile()
        return report.to_dict()


def _of_tier(groups, tier: str) -> list:
    if tier not in TIERS:
        raise HTTPException(422, f"unknown tier {tier!r} (choose from {', '.join(TIERS)})")
    return [(gid, g) for gid, g in groups.listed() if g.tier == tier]


def _summary(gid: str, group) -> dict[str, Any]:
    keeper = next(f for f in group.files if f.path == group.keeper)
    return {"id": gid, "tier": group.tier, "score": group.score, "files": len(group.files),
            "reclaim": reclaim(group), "keeper": keeper.id, "keeper_path": keeper.path,
            "keeper_reason": group.keeper_reason, "transform": group.transforms,
            "members": [f.id for f in group.files]}


def _journal_routes(api: APIRouter, state: "WebState") -> None:
    idx = state.api

    @api.get("/journals")
    def journals() -> dict[str, Any]:
        return {"move_to": str(state.move_to),
                "journals": answer(idx.journals, state.move_to)}

    @api.post("/journals/{name}/undo")
    def undo(name: str) -> dict[str, Any]:
        known = {j["name"] for j in answer(idx.journals, state.move_to)}
        if not JOURNAL_NAME.fullmatch(name) or name not in known:
            raise HTTPException(404, f"no journal {name[:80]!r} of this index")
        report = answer(idx.undo, state.move_to / name)
        state.groups.reconcile()
        return report.to_dict()
