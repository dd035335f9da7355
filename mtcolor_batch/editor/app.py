"""The editor's HTTP side: a small Starlette app on 127.0.0.1, guarded before any handler runs.

Guards, and the attack each one stops:

- **Host header** must be this server's own ``127.0.0.1:PORT`` / ``localhost:PORT``: a page on
  another domain that re-points its DNS name at 127.0.0.1 (DNS rebinding) sends its own name;
- **token** (random per session, in the URL fragment the CLI opens, so it is never sent in a
  Referer or logged) on every API call, as the ``X-Editor-Token`` header; images, which an
  ``<img>`` cannot send headers for, may pass it as ``?token=``, and only on GET;
- **writes** need that header and ``Content-Type: application/json``, neither of which a foreign
  page can send without a CORS preflight this server never answers, and a foreign ``Origin`` is
  refused outright;
- **size limits** on every request body, checked from ``Content-Length`` and again while reading;
- a strict Content-Security-Policy: the page loads only its own packaged files (no CDN, works offline).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from collections.abc import Awaitable, Callable, Iterable
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mtcolor_batch.core.errors import UserError
from mtcolor_batch.editor.document import check_document
from mtcolor_batch.editor.folder_panel import FolderPanel
from mtcolor_batch.editor.session import MAX_UPLOAD_MASKS, ConflictError, EditorSession, NotFound

MAX_JSON_BYTES = 1024 * 1024
"""Body limit for check/segment requests (a sidecar is capped far below this)."""
MAX_SAVE_BYTES = 64 * 1024 * 1024
"""Body limit for a save, which may carry painted masks (scan-sized PNGs, base64)."""
STATIC_FILES = {"index.html": "text/html", "editor.js": "text/javascript", "editor.css": "text/css"}
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cache-control": "no-store",
}
TOKEN_HEADER = "x-editor-token"
IMAGE_PATH = "/api/image"
"""The one API path that takes the token as ``?token=`` (and only on GET): images for ``<img>``."""


def allowed_hosts(port: int) -> set[str]:
    """The Host values a browser sends for this server (and nothing a rebinding domain can send)."""
    return {f"127.0.0.1:{port}", f"localhost:{port}"}


class Guard:
    """ASGI middleware: Host, token, Origin, content type and body size, before routing."""

    def __init__(self, app: ASGIApp, session: EditorSession, hosts: Iterable[str]) -> None:
        self.app = app
        self.session = session
        self.hosts = {h.lower() for h in hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        path: str = scope["path"]
        method: str = scope["method"]
        refusal = self._refusal(headers, path, method, scope.get("query_string", b"").decode("latin-1"))
        if refusal is not None:
            status, message = refusal
            await _send_headers(JSONResponse({"error": message}, status_code=status))(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [
                    *message["headers"],
                    *((k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()),
                ]
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _refusal(self, headers: dict[str, str], path: str, method: str, query: str) -> tuple[int, str] | None:
        if headers.get("host", "").lower() not in self.hosts:
            return 403, "unknown Host header: open the editor at the 127.0.0.1 address it printed"
        origin = headers.get("origin")
        if origin is not None and origin.lower() not in {f"http://{h}" for h in self.hosts}:
            return 403, "requests from other sites are refused"
        if method not in ("GET", "HEAD", "POST"):
            return 405, "method not allowed"
        if not path.startswith("/api/"):
            return None if method in ("GET", "HEAD") else (405, "method not allowed")
        token = headers.get(TOKEN_HEADER)
        if token is None and method == "GET" and path == IMAGE_PATH:  # an <img> cannot send headers
            token = _query_token(query)
        if token is None or not hmac.compare_digest(token.encode(), self.session.token.encode()):
            return 403, "missing or wrong session token: reopen the address `hints edit` printed"
        if method == "POST":
            if headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
                return 415, "send JSON"
            limit = MAX_SAVE_BYTES if path == "/api/save" else MAX_JSON_BYTES
            length = headers.get("content-length")
            if length is None or not length.isdigit():
                return 411, "Content-Length required"
            if int(length) > limit:
                return 413, f"request over the {limit}-byte limit"
        return None


def _query_token(query: str) -> str | None:
    from urllib.parse import parse_qs

    values = parse_qs(query).get("token")
    return values[0] if values else None


def _send_headers(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    return response


async def _json_body(request: Request, limit: int) -> dict[str, Any]:
    """The request's JSON object, reading at most ``limit`` bytes whatever Content-Length said."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _HttpError(413, f"request over the {limit}-byte limit")
        chunks.append(chunk)
    try:
        body = json.loads(b"".join(chunks))
    except (ValueError, UnicodeDecodeError):
        raise _HttpError(400, "the request is not valid JSON") from None
    except RecursionError:  # json recurses per level: a 1 MB body can nest 500,000 deep
        raise _HttpError(400, "the request is nested too deeply") from None
    if not isinstance(body, dict):
        raise _HttpError(400, "the request must be a JSON object")
    return body


class _HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _handled(
    handler: Callable[[Request], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    """Map the library's errors to HTTP statuses with the one-line message the CLI would print."""

    async def wrapper(request: Request) -> Response:
        try:
            return await handler(request)
        except _HttpError as exc:
            return JSONResponse({"error": exc.message}, status_code=exc.status)
        except NotFound as exc:
            return JSONResponse({"error": exc.one_line()}, status_code=404)
        except ConflictError as exc:
            return JSONResponse({"error": exc.one_line(), "conflict": True}, status_code=409)
        except UserError as exc:
            return JSONResponse({"error": exc.one_line()}, status_code=400)

    return wrapper


def _path_arg(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise _HttpError(400, "name a scan with 'path'")
    return value


def _uploads(raw: object) -> dict[str, bytes]:
    """``{key: "data:image/png;base64,..."}`` -> bytes; anything else is refused."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise _HttpError(400, "'uploads' must be an object")
    out = {}
    for key, value in raw.items():
        if not isinstance(value, str) or not value.startswith("data:image/png;base64,"):
            raise _HttpError(400, "a painted mask must be a PNG data URL")
        try:
            out[str(key)] = base64.b64decode(value.split(",", 1)[1], validate=True)
        except (binascii.Error, ValueError):
            raise _HttpError(400, "a painted mask is not valid base64") from None
    return out


def create_app(session: EditorSession, hosts: Iterable[str]) -> ASGIApp:
    """The editor app for ``session``, answering only to ``hosts`` (see :func:`allowed_hosts`)."""

    async def static(request: Request) -> Response:
        name = request.path_params.get("name", "index.html")
        if name not in STATIC_FILES:
            return JSONResponse({"error": "not found"}, status_code=404)
        data = (resources.files("mtcolor_batch.editor") / "static" / name).read_bytes()
        return Response(data, media_type=STATIC_FILES[name])

    @_handled
    async def scans(request: Request) -> Response:
        items = await run_in_threadpool(session.scan_list)
        return JSONResponse({"root": str(session.root), "scans": items})

    @_handled
    async def scan(request: Request) -> Response:
        rel = _path_arg(request.query_params.get("path"))
        return JSONResponse(await run_in_threadpool(session.load, rel))

    @_handled
    async def image(request: Request) -> Response:
        rel = _path_arg(request.query_params.get("path"))
        which = request.query_params.get("kind", "scan")
        render = session.overlay_png if which == "overlay" else session.image_png
        return Response(await run_in_threadpool(render, rel), media_type="image/png")

    @_handled
    async def colors(request: Request) -> Response:
        return JSONResponse({"colors": await run_in_threadpool(session.colors)})

    @_handled
    async def check(request: Request) -> Response:
        body = await _json_body(request, MAX_JSON_BYTES)
        doc = check_document(body.get("doc"), MAX_UPLOAD_MASKS)
        return JSONResponse(await run_in_threadpool(session.check, _path_arg(body.get("path")), doc))

    @_handled
    async def segment(request: Request) -> Response:
        body = await _json_body(request, MAX_JSON_BYTES)
        points = body.get("points")
        if not isinstance(points, list) or not all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(v, (int, float)) for v in p)
            for p in points
        ):
            raise _HttpError(400, "'points' must be [[x, y], ...]")
        png = await run_in_threadpool(session.segment, _path_arg(body.get("path")), points)
        return Response(png, media_type="image/png")

    @_handled
    async def preview(request: Request) -> Response:
        body = await _json_body(request, MAX_JSON_BYTES)
        png = await run_in_threadpool(session.preview, _path_arg(body.get("path")))
        return Response(png, media_type="image/png")

    @_handled
    async def save(request: Request) -> Response:
        body = await _json_body(request, MAX_SAVE_BYTES)
        doc, etag = body.get("doc"), body.get("etag")
        if not isinstance(doc, dict) or not isinstance(etag, str):
            raise _HttpError(400, "a save needs 'doc' and the 'etag' the page loaded")
        check_document(doc, MAX_UPLOAD_MASKS)
        result = await run_in_threadpool(
            session.save, _path_arg(body.get("path")), etag, doc, _uploads(body.get("uploads"))
        )
        return JSONResponse(result, status_code=200 if result.get("saved") else 422)

    # The "Folder rules" panel (editor/folder_panel.py): the nearest mtcolor-folder.yaml of a scan.
    panel = FolderPanel(session)

    def _text_arg(value: object) -> str:
        if not isinstance(value, str):
            raise _HttpError(400, "'text' must be the rules file's text")
        return value

    @_handled
    async def folder(request: Request) -> Response:
        rel = _path_arg(request.query_params.get("path"))
        return JSONResponse(await run_in_threadpool(panel.load, rel))

    @_handled
    async def folder_check(request: Request) -> Response:
        body = await _json_body(request, MAX_JSON_BYTES)
        add = body.get("add")
        if add is not None and not isinstance(add, dict):
            raise _HttpError(400, "'add' must be an object")
        rel, text = _path_arg(body.get("path")), _text_arg(body.get("text"))
        return JSONResponse(await run_in_threadpool(panel.check, rel, text, add))

    @_handled
    async def folder_save(request: Request) -> Response:
        body = await _json_body(request, MAX_JSON_BYTES)
        etag = body.get("etag")
        if not isinstance(etag, str):
            raise _HttpError(400, "a save needs the 'etag' the page loaded")
        rel, text = _path_arg(body.get("path")), _text_arg(body.get("text"))
        result = await run_in_threadpool(panel.save, rel, etag, text)
        return JSONResponse(result, status_code=200 if result.get("saved") else 422)

    routes = [
        Route("/", static, methods=["GET"]),
        Route("/static/{name}", static, methods=["GET"]),
        Route("/api/scans", scans, methods=["GET"]),
        Route("/api/scan", scan, methods=["GET"]),
        Route(IMAGE_PATH, image, methods=["GET"]),
        Route("/api/colors", colors, methods=["GET"]),
        Route("/api/check", check, methods=["POST"]),
        Route("/api/segment", segment, methods=["POST"]),
        Route("/api/save", save, methods=["POST"]),
        Route("/api/preview", preview, methods=["POST"]),
        Route("/api/folder", folder, methods=["GET"]),
        Route("/api/folder/check", folder_check, methods=["POST"]),
        Route("/api/folder/save", folder_save, methods=["POST"]),
    ]
    return Guard(Starlette(routes=routes), session, hosts)
