"""The explorer's app factory and server: FastAPI behind the :class:`~.security.Guard`, serving
the API, the page (``static/``, bundled with the package) and the run's reports.

``serve`` binds 127.0.0.1 on a random free port (or the one asked for), makes a per-launch token,
prints the URL and runs uvicorn until interrupted.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import webbrowser
from collections.abc import Callable, Iterable
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from policylens.explorer.api import router
from policylens.explorer.jobs import Pending
from policylens.explorer.security import Guard, loopback_hosts
from policylens.explorer.session import Explorer

STATIC_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css",
                ".txt": "text/plain", ".svg": "image/svg+xml"}  # fmt: skip
log = logging.getLogger("policylens.explorer")


def static_files() -> dict[str, bytes]:
    """The page's files, by name, read once from the package (nothing else is ever served as
    static)."""
    folder = resources.files("policylens.explorer") / "static"
    return {
        f.name: f.read_bytes()
        for f in folder.iterdir()
        if f.is_file() and Path(f.name).suffix in STATIC_TYPES
    }


def create_app(explorer: Explorer, token: str, hosts: Iterable[str]) -> Any:
    """The explorer as an ASGI app: the API and page behind the token, Host and Origin checks.

    ``hosts`` are the Host header values accepted (:func:`~.security.loopback_hosts` of the port).
    The OpenAPI schema is at ``/<token>/openapi.json``; the interactive docs pages are off (they
    load scripts from a CDN, which the Content-Security-Policy forbids and offline use lacks).
    """
    app = FastAPI(title="policylens explorer", docs_url=None, redoc_url=None)
    app.state.explorer = explorer
    app.include_router(router)
    files = static_files()

    @app.get("/", include_in_schema=False)
    def index() -> Response:
        return Response(files["index.html"], media_type="text/html")

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        if name not in files:
            raise HTTPException(404, "no such file")
        return Response(files[name], media_type=STATIC_TYPES[Path(name).suffix])

    @app.exception_handler(Pending)
    def pending(request: Request, e: Pending) -> JSONResponse:
        return JSONResponse({"pending": e.job.to_dict()}, status_code=202)

    @app.exception_handler(ValueError)
    def bad_request(request: Request, e: ValueError) -> JSONResponse:
        return JSONResponse({"error": str(e)}, status_code=400)

    @app.exception_handler(FileNotFoundError)
    def not_found(request: Request, e: FileNotFoundError) -> JSONResponse:
        return JSONResponse({"error": str(e)}, status_code=404)

    @app.exception_handler(StarletteHTTPException)
    def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(e.detail)}, status_code=e.status_code)

    return Guard(app, token, hosts)


def free_socket(port: int = 0) -> socket.socket:
    """A listening socket on 127.0.0.1 (``port`` 0: one the OS picks), with a clear error when
    the port is taken.

    Made with ``IPPROTO_TCP`` named: asyncio turns Nagle's algorithm off (TCP_NODELAY) only on
    connections whose socket says so, and with it on, a kept-alive connection held each answer's
    body back until the page acknowledged its headers, about 40 ms (measured)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        sock.close()
        raise ValueError(
            f"--port {port} is in use on 127.0.0.1; pick another or omit --port"
        ) from None
    sock.listen(64)
    return sock


class Background:
    """An explorer served from a thread of this process (tests, benchmarks, notebooks)."""

    def __init__(self, explorer: Explorer, port: int = 0) -> None:
        import uvicorn

        self.explorer = explorer
        self.sock = free_socket(port)
        self.port = self.sock.getsockname()[1]
        self.token = secrets.token_urlsafe(24)
        app = create_app(explorer, self.token, loopback_hosts(self.port))
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )
        self.thread.start()
        while not self.server.started and self.thread.is_alive():
            self.thread.join(0.01)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{self.token}/"

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.explorer.jobs.close()
        self.sock.close()


def serve(
    run: str | os.PathLike,
    port: int = 0,
    open_browser: bool = True,
    threads: int = 1,
    say: Callable[[str], Any] = print,
    data: str | os.PathLike | None = None,
) -> None:
    """Serve the explorer of ``run`` on 127.0.0.1 until interrupted; prints the URL (with its
    token) and opens it in the browser unless ``open_browser`` is False. ``data``: a decision
    transformer's trajectory store (see :class:`Explorer`)."""
    import torch
    import uvicorn

    torch.set_num_threads(threads)
    explorer = Explorer(run, data=data)  # a bad run folder fails here, before the port opens
    sock = free_socket(port)
    port = sock.getsockname()[1]
    token = secrets.token_urlsafe(24)
    app = create_app(explorer, token, loopback_hosts(port))
    url = f"http://127.0.0.1:{port}/{token}/"
    say(f"policylens explorer on {explorer.run.path}: {url}")
    say("(the link holds a per-launch token; Ctrl-C stops the server)")
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    if open_browser:
        threading.Timer(0.5, webbrowser.open, args=(url,)).start()
    try:
        server.run(sockets=[sock])
    finally:
        explorer.jobs.close()
        sock.close()
