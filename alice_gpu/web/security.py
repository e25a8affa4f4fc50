"""Web, security: a server of a person's private photos, tested as an attacker would.

* Loopback by default; any other address needs a token (made and printed at start, as
  Jupyter does, or ``--token``), given once as ``?token=`` (then a cookie) or as
  ``Authorization: Bearer``.
* The Host header must name this server (DNS rebinding gets 400).
* Every request that changes something is a POST carrying the page's CSRF token in
  ``X-CSRF-Token`` (403 without it); a cross-origin ``Origin`` is refused.
* ``--read-only`` refuses every POST but a search by image.
* Every answer carries a Content-Security-Policy without inline script, ``nosniff``,
  no referrer and no framing.
"""

from __future__ import annotations

import hmac
import ipaddress
from typing import Awaitable, Callable
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

CSP = ("default-src 'self'; img-src 'self' blob: data:; script-src 'self'; "
       "style-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
       "frame-ancestors 'none'")
HEADERS = {"content-security-policy": CSP, "x-content-type-options": "nosniff",
           "referrer-policy": "no-referrer", "x-frame-options": "DENY"}
READ_ONLY_POSTS = ("/api/search",)        # a search by image changes nothing
TOKEN_COOKIE = "alice_gpu_token"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_hosts(host: str, port: int) -> set[str]:
    """The Host headers this server answers to."""
    names = {*LOOPBACK_NAMES, "[::1]"} if is_loopback(host) else {host, *LOOPBACK_NAMES, "[::1]"}
    return {n for name in names for n in (name, f"{name}:{port}")}


class Guard:
    """The checks every request passes before a route sees it (an HTTP middleware)."""

    def __init__(self, hosts: set[str], csrf: str, token: str | None, read_only: bool):
        self.hosts, self.csrf, self.token, self.read_only = hosts, csrf, token, read_only

    async def __call__(self, request: Request,
                       call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        refusal = self.check(request)
        if refusal is not None:
            response = refusal
        elif self.token and request.query_params.get("token"):
            response = RedirectResponse(str(request.url.remove_query_params("token")), 303)
            response.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="strict")
        else:
            response = await call_next(request)
        response.headers.update(HEADERS)
        return response

    def check(self, request: Request) -> Response | None:
        host = request.headers.get("host", "")
        if host not in self.hosts:
            return _refuse(400, f"this server does not answer to the host {host[:80]!r}")
        if self.token and not self._authorised(request):
            return _refuse(401, "a token is needed: open the URL the server printed")
        if request.method in ("GET", "HEAD", "OPTIONS"):
            return None
        if request.method != "POST":
            return _refuse(405, "only GET and POST")
        origin = request.headers.get("origin")
        if origin and urlsplit(origin).netloc not in self.hosts:
            return _refuse(403, "a request from another site")
        if not hmac.compare_digest(request.headers.get("x-csrf-token", ""), self.csrf):
            return _refuse(403, "the page's CSRF token is missing or wrong: reload the page")
        if self.read_only and request.url.path not in READ_ONLY_POSTS:
            return _refuse(403, "this server is read-only (--read-only)")
        return None

    def _authorised(self, request: Request) -> bool:
        given = (request.cookies.get(TOKEN_COOKIE) or request.query_params.get("token")
                 or request.headers.get("authorization", "").removeprefix("Bearer ").strip())
        return bool(given) and hmac.compare_digest(given, self.token or "")


def _refuse(status: int, message: str) -> Response:
    return JSONResponse({"error": message}, status_code=status)
