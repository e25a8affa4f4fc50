"""Web, the server process: it holds the index, answers the CLI through it, runs uvicorn.

``serve`` takes the index's write lock for its life (unless ``--read-only``), so
that CLI commands started meanwhile are answered by it, an ``index`` from a
terminal is carried out by it (with progress on that terminal), and the web app's
own writes take turns with them. Started while an ``index`` run holds the index,
it answers through that run (what is committed so far) and takes the index over
when the run ends. The embedding model is loaded once, in the background, and
stays resident.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, StoreLockedError

if TYPE_CHECKING:
    from ..api import AliceIndex
    from .groups import Groups

log = logging.getLogger(__name__)

HOLD_RETRY = 2.0      # seconds between tries to take over an index another run holds


@dataclass
class WebState:
    """What every route shares: the API, the page's secrets, the groups, the options."""

    api: "AliceIndex"
    move_to: Path
    read_only: bool = False
    token: str | None = None
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    groups: "Groups | None" = None
    holding: bool = False


class Keeper(threading.Thread):
    """Holds the index for the server's life: tries until it can (another run may hold
    it), then serves it (views for the web app, the socket for the CLI) until stopped."""

    def __init__(self, api: "AliceIndex", state: WebState, watch: list[str] | None = None):
        super().__init__(name="alice-serve-holder", daemon=True)
        self.api, self.state, self.watch = api, state, watch or []
        self.stop = threading.Event()
        self.ready = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                with self.api.hold():
                    self.state.holding = True
                    self.ready.set()
                    if self.watch:                    # serve --watch: kept current meanwhile
                        from ..api.watching import Watcher

                        try:
                            Watcher(self.api, self.watch, stop=self.stop).run(hold=False)
                        except Exception:   # noqa: BLE001 - the server goes on unwatched
                            log.exception("the watch of %s stopped", ", ".join(self.watch))
                    self.stop.wait()
                    self.state.holding = False
                return
            except StoreLockedError:
                self.ready.set()                      # answered through the holder meanwhile
                self.stop.wait(HOLD_RETRY)


def warm(api: "AliceIndex") -> None:
    """Load the model and start the upload decoder now, not at the first search."""
    try:
        api.warm()
    except Exception as exc:  # noqa: BLE001 - the first search loads it instead
        log.info("could not load the model ahead: %s", exc)


class Running:
    """A started server: its URL, its state, and the uvicorn server that answers."""

    def __init__(self, server: Any, state: WebState, keeper: Keeper | None, url: str,
                 sock: socket.socket):
        self.server, self.state, self.keeper, self.url = server, state, keeper, url
        self.sock = sock
        self.thread: threading.Thread | None = None

    def run(self) -> None:
        """Answer until Ctrl-C (or ``stop``), then let the index go."""
        try:
            self.server.run(sockets=[self.sock])
        finally:
            self.release()

    def in_background(self) -> "Running":
        """Answer on a thread (tests, notebooks); returns once it listens."""
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name="alice-web", daemon=True)
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise ConfigError(f"the web server did not start on {self.url}")
            self.thread.join(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout=30)
        self.release()

    def release(self) -> None:
        if self.keeper is not None:
            self.keeper.stop.set()
            self.keeper.join(timeout=30)
            self.keeper = None


def start(api: "AliceIndex", host: str = "127.0.0.1", port: int = 8765, *,
          read_only: bool = False, token: str | None = None,
          move_to: str | os.PathLike[str] | None = None,
          watch: list[str] | None = None) -> Running:
    """Take the index (unless read-only), build the app, and make the server ready;
    ``watch``: folders the holder keeps the index of current (:mod:`alice_gpu.api.watching`)."""
    import uvicorn

    from .app import create_app
    from .groups import Groups
    from .security import is_loopback

    if not is_loopback(host) and not token:
        raise ConfigError(f"--host {host} is reachable from other machines: give --token, or "
                          f"--token auto to have one made and printed")
    if watch and read_only:
        raise ConfigError("--watch writes the index; it does not go with --read-only")
    if token == "auto":
        token = secrets.token_urlsafe(24)
    sock = listening(host, port)           # a port in use is one line, before anything else
    state = WebState(api, Path(os.path.expanduser(move_to or "~/alice-gpu-set-aside")).resolve(),
                     read_only, token)
    keeper = None
    if not read_only:
        keeper = Keeper(api, state, watch)
        keeper.start()
        keeper.ready.wait(30)
    state.groups = Groups(api, state.move_to)
    app = create_app(state, host, port)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=5)
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/" + (
        f"?token={token}" if token else "")
    threading.Thread(target=warm, args=(api,), name="alice-warm", daemon=True).start()
    threading.Thread(target=state.groups.ensure, name="alice-groups-start",
                     daemon=True).start()
    return Running(uvicorn.Server(config), state, keeper, url, sock)


def listening(host: str, port: int) -> socket.socket:
    """The server's socket, bound here so that a port in use is a one-line error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc} "
                          f"(choose another with --port)") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(api: "AliceIndex", host: str, port: int, *, read_only: bool = False,
          token: str | None = None, move_to: str | os.PathLike[str] | None = None,
          open_browser: bool = False, announce: Any = print,
          watch: list[str] | None = None) -> None:
    """Run the web app until Ctrl-C. ``announce`` gets the URL (with its token)."""
    running = start(api, host, port, read_only=read_only, token=token, move_to=move_to,
                    watch=watch)
    announce(running.url)
    if open_browser:
        import webbrowser

        threading.Timer(0.5, webbrowser.open, args=(running.url,)).start()
    try:
        running.run()
    except KeyboardInterrupt:             # Ctrl-C is how a server is stopped: exit 0
        log.info("stopped")
