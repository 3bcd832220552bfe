"""The explorer's front door: every request passes :class:`Guard` before the app sees it.

The server runs on a researcher's machine beside their files, so it trusts nothing it cannot
check:

- **token**: a per-launch secret is the first segment of every URL (``/<token>/...``); a request
  without it is refused. Relative links in the page and in static reports keep it.
- **Host**: only the loopback names of our own port (no DNS rebinding: a page on ``evil.test``
  that rebinds its name to 127.0.0.1 still sends ``Host: evil.test``).
- **Origin / Sec-Fetch-Site**: a request another site's page makes is refused (no cross-site
  requests); no CORS headers are ever sent, so no other origin may read an answer.
- **headers**: a strict Content-Security-Policy (``default-src 'self'``: no inline script, no
  other origin), no sniffing, no referrer (the token never leaks in one), no framing. Static
  reports (inline styles, data: images) get a sandboxed policy that runs no script at all.

Refusals are 403 with one sentence.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Iterable, MutableMapping
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

APP_CSP = (
    "default-src 'self'; base-uri 'none'; object-src 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)
REPORT_CSP = (
    "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; "
    "frame-ancestors 'none'; sandbox"
)
"""Static reports embed their styles and pictures; they may show them, and run nothing."""
HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
]


def loopback_hosts(port: int) -> set[str]:
    """Host header values of the loopback names at ``port``."""
    return {f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"}


class Guard:
    """ASGI middleware: token, Host and Origin checks; security headers on every answer."""

    def __init__(self, app: ASGIApp, token: str, hosts: Iterable[str]) -> None:
        if len(token) < 16:
            raise ValueError("the explorer's token must be at least 16 characters")
        self.app = app
        self.token = token
        self.hosts = {h.lower() for h in hosts}
        self.origins = {f"http://{h}" for h in self.hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":  # websockets: the explorer has none
            await send({"type": "websocket.close", "code": 1008})
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self.refusal(scope, headers)
        if refusal:
            await _answer(send, 403, {"error": refusal})
            return
        prefix = f"/{self.token}"
        if scope["path"] == prefix:
            await _answer(send, 307, {}, [(b"location", f"{prefix}/".encode())])
            return
        inner = dict(scope, root_path=scope.get("root_path", "") + prefix)

        async def secured(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                report = inner["path"].endswith(".html") and "/files/" in inner["path"]
                csp = REPORT_CSP if report else APP_CSP
                kept = [
                    (k, v) for k, v in message.get("headers", []) if k.lower() != b"cache-control"
                ]
                message = dict(
                    message,
                    headers=kept + HEADERS + [(b"content-security-policy", csp.encode())],
                )
            await send(message)

        await self.app(inner, receive, secured)

    def refusal(self, scope: Scope, headers: dict[str, str]) -> str:
        """Why a request is refused, or "" to let it in."""
        if headers.get("host", "").lower() not in self.hosts:
            return "wrong Host header: open the explorer at the address it printed"
        origin = headers.get("origin")
        if origin is not None and origin.lower() not in self.origins:
            return "cross-origin requests are refused"
        if headers.get("sec-fetch-site") in ("cross-site", "same-site"):
            return "cross-site requests are refused"
        first = scope["path"].split("/", 2)[1] if scope["path"].startswith("/") else ""
        if not hmac.compare_digest(first.encode(), self.token.encode()):
            return "missing or wrong token: open the explorer with the URL it printed"
        return ""


async def _answer(
    send: Send, status: int, body: dict[str, Any], extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    headers += HEADERS + [(b"content-security-policy", APP_CSP.encode())] + (extra or [])
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})
