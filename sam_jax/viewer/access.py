"""Who may use the viewer, as Jupyter decides it: whoever holds the random token of the URL printed at start-up.
Other users of a shared machine reach 127.0.0.1 too, so every request must carry it, whatever its route: as
`?token=` (the printed URL) or in the cookie that such a request sets, which the page's own requests then carry.
Compared in constant time; without it, 403 before any route runs."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from starlette.requests import Request
from starlette.responses import JSONResponse

TOKEN_BYTES = 32


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def cookie_name(token: str) -> str:
    """Cookies ignore ports: a name of its own per token keeps two viewers on one machine from overwriting each
    other's (the hash tells nothing of the token)."""
    return f"sam_jax_viewer_{hashlib.sha256(token.encode()).hexdigest()[:16]}"


class TokenGate:
    """ASGI middleware: passes requests that carry `token`, answers 403 to the others."""

    def __init__(self, app, token: str):
        if not token:
            raise ValueError("the viewer's token is empty")
        self.app, self._token, self.cookie = app, token.encode(), cookie_name(token)

    def _matches(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self._token)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)
        if self._matches(request.query_params.get("token")):
            return await self.app(scope, receive, self._setting_cookie(send))
        if self._matches(request.cookies.get(self.cookie)):
            return await self.app(scope, receive, send)
        refused = JSONResponse(
            dict(error="this viewer needs its token: open the URL with ?token=… that it printed when it started"),
            status_code=403,
        )
        await refused(scope, receive, send)

    def _setting_cookie(self, send):
        cookie = f"{self.cookie}={self._token.decode()}; Path=/; HttpOnly; SameSite=Strict".encode("latin-1")

        async def sending(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", cookie)]}
            await send(message)

        return sending
