"""Running the app under uvicorn: in the foreground (``collab serve``) or on a thread (tests, ``collab demo
--serve``).

The listening socket is bound before uvicorn starts, so the address (port 0: a free one) is known and can be
printed or handed to a client before the first request, and nothing races for the port.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

from ..errors import ConfigError


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (0: any free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc}") from exc
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def page_banner(url: str) -> str:
    """The line ``collab serve`` and ``collab demo --serve`` print once the page can be opened."""
    return f"page: {url}/   (OpenAI-compatible API: {url}/v1)"


def _server(app, *, log_level: str):
    import uvicorn

    # h11: plain, and the same on every platform; no access log (a prompt is the caller's business)
    return uvicorn.Server(uvicorn.Config(app, log_level=log_level, access_log=False, http="h11", lifespan="off",
                                         timeout_graceful_shutdown=5))


def serve(app, *, host: str = "127.0.0.1", port: int = 8000, on_ready: Callable[[str], None] | None = None,
          log_level: str = "warning") -> None:
    """Serve ``app`` until SIGINT/SIGTERM; ``on_ready(url)`` once the socket listens."""
    sock = bind(host, port)
    server = _server(app, log_level=log_level)
    if on_ready is not None:
        on_ready(url_of(sock))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


class BackgroundServer:
    """``app`` served on a daemon thread until the ``with`` block ends (``url`` is set on entry)."""

    def __init__(self, app, *, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        self.app = app
        self.sock = bind(host, port)
        self.url = url_of(self.sock)
        self._server = _server(app, log_level=log_level)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self.sock]},
                                        name="collab-serve", daemon=True)

    def __enter__(self) -> BackgroundServer:
        self._thread.start()
        while not self._server.started:  # uvicorn sets it once the socket is served
            if not self._thread.is_alive():
                raise ConfigError("the server thread exited before it started")
            self._thread.join(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self._server.should_exit = True
        self._thread.join(10)
        self.sock.close()
