"""The server: one FastAPI application (API routes, then the Gradio page mounted at `/`), one uvicorn process.

`create_app` wires the models, the worker, the upload store and the page together; `serve` binds the
socket first (so a port in use fails before the models load) and runs uvicorn on it. Everything the server
writes (uploads, Gradio's upload cache, playable copies) lives in one private working directory, removed
when the server stops.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from .api import APIError, build_router
from .context import ServerContext
from .media import PlayableVideos
from .models import ServedModel
from .paths import AllowedRoots
from .uploads import UploadError, UploadStore
from .worker import ModelWorker

logger = logging.getLogger(__name__)

API_PREFIXES = ("/v1/",)
# Room for a data URL's base64 (4/3 of the video) and the rest of a JSON body or multipart envelope.
BODY_OVERHEAD_BYTES = 1 << 20
# How much of a refused body is read before answering 413 (clients read no response before they sent all).
MAX_DRAIN_FACTOR = 4


class BodyLimit:
    """Refuses API request bodies over `limit` bytes with a 413 OpenAI error, before they are stored.

    A declared Content-Length over the limit is answered at once (after draining what the client sends, up
    to MAX_DRAIN_FACTOR × limit, so it can read the answer); a body that grows past the limit without one
    stops the handler reading it.
    """

    def __init__(self, app, limit: int, max_upload_bytes: int) -> None:
        self.app = app
        self.limit = limit
        self.max_upload_bytes = max_upload_bytes

    def error(self) -> APIError:
        return APIError(
            413,
            f"the request is larger than this server accepts (videos up to {self.max_upload_bytes / 2**20:g} MiB)",
            "file_too_large",
        )

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(API_PREFIXES):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length", b"").decode("latin-1")
        if declared.isdigit() and int(declared) > self.limit:
            drained = 0
            while drained <= MAX_DRAIN_FACTOR * self.limit:
                message = await receive()
                drained += len(message.get("body", b""))
                if message["type"] != "http.request" or not message.get("more_body"):
                    break
            await self.error().response()(scope, receive, send)
            return
        received = 0

        async def counted_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise self.error()
            return message

        await self.app(scope, counted_receive, send)


def _error_handlers() -> dict[type[Exception], Callable]:
    async def api_error(request: Request, err: APIError) -> JSONResponse:
        return err.response()

    async def upload_error(request: Request, err: UploadError) -> JSONResponse:
        return APIError(err.status, str(err), err.code).response()

    async def validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
        return APIError(
            422, f"invalid request: {json.dumps(err.errors(), default=str)[:500]}", "invalid_request"
        ).response()

    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        return APIError(err.status_code, str(err.detail), None).response()

    return {
        APIError: api_error,
        UploadError: upload_error,
        RequestValidationError: validation_error,
        HTTPException: http_error,
    }


def create_app(
    models: list[ServedModel],
    *,
    workdir: Path,
    roots: AllowedRoots,
    queue_size: int,
    max_upload_bytes: int,
) -> FastAPI:
    """The application; `workdir` must be a private directory the caller removes after the server stopped."""
    workdir = Path(workdir)
    # Gradio reads its upload folder from the environment when the page is built: keep uploads private.
    os.environ["GRADIO_TEMP_DIR"] = str(workdir / "gradio")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    from .webapp import CSS, build_page

    ctx = ServerContext(
        models=models,
        worker=ModelWorker(models, queue_size),
        uploads=UploadStore(workdir / "uploads", max_upload_bytes),
        roots=roots,
        playable=PlayableVideos(workdir / "media"),
        max_upload_bytes=max_upload_bytes,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        try:
            yield
        finally:
            ctx.worker.close()
            ctx.uploads.close()

    app = FastAPI(title="Mobile-VideoGPT", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    for kind, handler in _error_handlers().items():
        app.add_exception_handler(kind, handler)
    app.add_middleware(
        BodyLimit, limit=max_upload_bytes * 4 // 3 + BODY_OVERHEAD_BYTES, max_upload_bytes=max_upload_bytes
    )
    app.include_router(build_router(ctx))
    return gr.mount_gradio_app(
        app,
        build_page(ctx),
        path="/",
        allowed_paths=[*(str(r) for r in roots.roots), str(ctx.playable.cache_dir.resolve())],
        max_file_size=max_upload_bytes,
        footer_links=[],
        run_history=False,
        ssr_mode=False,
        mcp_server=False,
        css=CSS,
    )


def bind(host: str, port: int) -> socket.socket:
    """A bound socket for `host:port` (port 0 picks a free one); OSError names the address when it is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port} ({err.strerror}); choose another --port") from err
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve(app: FastAPI, sock: socket.socket) -> None:
    """Run uvicorn on the bound socket until interrupted (Ctrl-C)."""
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[sock])
