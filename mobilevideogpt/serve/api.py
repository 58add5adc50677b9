"""The OpenAI-compatible API: `POST /v1/chat/completions`, `/v1/files`, `GET /v1/models`, `GET /health`.

A chat request carries one user message whose content has text parts (the prompt) and one video part,
`{"type": "video_url", "video_url": {"url": URL}}`, where URL is a `data:video/...;base64,...` URL, the id of
a file uploaded with `POST /v1/files`, or a `file://` path inside a directory the operator allowed
(`--allow-root`). An optional system message replaces the system prompt. `max_tokens` (or
`max_completion_tokens`), `temperature` (default 0: greedy, as in training and evaluation), `top_p`, `seed`
and vLLM's `min_tokens` steer generation; `stream: true` answers with server-sent events in OpenAI's chunk
format (`stream_options.include_usage` adds the usage chunk). Like llama.cpp's server, responses add a
`timings` object (video decode, encoders, first token, tokens/s).

Every refusal is an OpenAI error object `{"error": {"message", "type", "param", "code"}}`: 400 for a bad
request or an unreadable video, 403 for a path outside the allowed directories, 404 for an unknown model or
file, 413 for a video over the size limit, 415 for a body not sent as `application/json`, 503 with `Retry-After` when the queue is full.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.background import BackgroundTask
from starlette.datastructures import UploadFile

from ..data.video import VideoDecodeError
from .context import ServerContext
from .models import NotAVideoError, ServedModel
from .paths import PathNotAllowed
from .uploads import CHUNK_BYTES, decode_data_url, reason
from .worker import Job, QueueFull, WorkerClosed, prepare

logger = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 512
MAX_TOKENS_LIMIT = 4096
# Seconds between checks that a non-streaming client is still connected.
DISCONNECT_POLL_S = 0.5
FILE_ID = re.compile(r"file-[0-9a-f]{32}")
ERROR_TYPES = {
    400: "invalid_request_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


class APIError(Exception):
    """A refused request, answered as an OpenAI error object."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.param = param
        self.headers = headers
        super().__init__(message)

    def body(self) -> dict:
        kind = ERROR_TYPES.get(self.status, "server_error")
        return {"error": {"message": str(self), "type": kind, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def queue_full_error(err: QueueFull) -> APIError:
    return APIError(503, str(err), "queue_full", headers={"Retry-After": str(err.retry_after_s)})


def video_error(err: Exception) -> APIError:
    return APIError(400, f"the video is not readable: {reason(err)}", "invalid_video", "messages")


@dataclass
class ChatRequest:
    model: ServedModel
    prompt: str
    video_url: str
    system_prompt: str | None
    stream: bool
    include_usage: bool
    max_tokens: int
    min_tokens: int
    temperature: float
    top_p: float
    seed: int | None

    def settings(self) -> dict[str, Any]:
        return {
            "max_new_tokens": self.max_tokens,
            "min_new_tokens": self.min_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "system_prompt": self.system_prompt,
        }


def _number(body: dict, name: str, default, kind: type, low: float, high: float, low_open: bool = False):
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
        raise APIError(400, f"`{name}` must be {'an integer' if kind is int else 'a number'}", "invalid_type", name)
    if value < low or value > high or (low_open and value == low):
        bounds = f"{'(' if low_open else '['}{low}, {high}]"
        raise APIError(400, f"`{name}` must be in {bounds}, got {value}", "invalid_value", name)
    return kind(value)


def _text_of(content: Any, role: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "\n".join(str(p.get("text", "")) for p in content)
    raise APIError(400, f"a {role} message's content must be text", "invalid_content", "messages")


def _user_parts(content: Any) -> tuple[str, str]:
    """(prompt, video URL) from a user message's content parts."""
    if not isinstance(content, list):
        raise APIError(
            400,
            'the user message needs a video: give `content` as a list of parts, {"type": "text", "text": ...} '
            'and {"type": "video_url", "video_url": {"url": ...}}',
            "missing_video",
            "messages",
        )
    texts, videos = [], []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif (
            kind == "video_url"
            and isinstance(part.get("video_url"), dict)
            and isinstance(part["video_url"].get("url"), str)
        ):
            videos.append(part["video_url"]["url"])
        else:
            raise APIError(
                400,
                f"unsupported content part {json.dumps(part)[:120]}: use text parts and one "
                '{"type": "video_url", "video_url": {"url": ...}} part',
                "invalid_content",
                "messages",
            )
    if len(videos) != 1:
        raise APIError(
            400, f"the user message needs exactly one video_url part, got {len(videos)}", "missing_video", "messages"
        )
    prompt = "\n".join(texts).strip()
    if not prompt:
        raise APIError(
            400,
            "the user message needs a text part with the question, e.g. "
            '"Analyze this squats video and provide corrective feedback."',
            "missing_prompt",
            "messages",
        )
    return prompt, videos[0]


def parse_chat_request(body: Any, ctx: ServerContext) -> ChatRequest:
    """Check a chat completion request; `APIError` (400/404) says what to change."""
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object", "invalid_body")
    model = ctx.model(body.get("model"))
    if model is None:
        ids = ", ".join(m.id for m in ctx.models)
        raise APIError(
            404, f"the model {body.get('model')!r} is not served here; available: {ids}", "model_not_found", "model"
        )
    unsupported = [k for k in ("tools", "functions", "response_format", "logprobs", "stop", "audio") if body.get(k)]
    if unsupported:
        raise APIError(
            400, f"not supported by this server: {', '.join(unsupported)}", "unsupported_parameter", unsupported[0]
        )
    if body.get("n", 1) != 1:
        raise APIError(400, "`n` must be 1: this server returns one answer per request", "invalid_value", "n")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise APIError(400, "`messages` must be a non-empty list of message objects", "invalid_messages", "messages")
    roles = [m.get("role") for m in messages]
    system = [m for m in messages if m.get("role") in ("system", "developer")]
    users = [m for m in messages if m.get("role") == "user"]
    if len(users) != 1 or len(system) + len(users) != len(messages) or len(system) > 1:
        raise APIError(
            400,
            f"send one user message (and at most one system message); got roles {roles}: "
            "this model answers one question about one video",
            "invalid_messages",
            "messages",
        )
    prompt, video_url = _user_parts(users[0].get("content"))
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise APIError(400, "`stream` must be true or false", "invalid_type", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise APIError(400, "`stream_options` must be an object", "invalid_type", "stream_options")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    max_tokens = _number({"max_tokens": max_tokens}, "max_tokens", DEFAULT_MAX_TOKENS, int, 1, MAX_TOKENS_LIMIT)
    return ChatRequest(
        model=model,
        prompt=prompt,
        video_url=video_url,
        system_prompt=_text_of(system[0].get("content"), "system") if system else None,
        stream=stream,
        include_usage=bool(options.get("include_usage")),
        max_tokens=max_tokens,
        min_tokens=_number(body, "min_tokens", 0, int, 0, max_tokens),
        temperature=_number(body, "temperature", 0.0, float, 0, 2),
        top_p=_number(body, "top_p", 1.0, float, 0, 1, low_open=True),
        seed=_number(body, "seed", None, int, -(2**63), 2**63 - 1),
    )


def _chunk(completion_id: str, created: int, model: str, delta: dict, finish: str | None = None, **extra) -> str:
    payload = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        **extra,
    }
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def _usage(chat: ChatRequest, result) -> dict:
    prompt_tokens = chat.model.prompt_tokens(chat.prompt, chat.system_prompt)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": result.num_new_tokens,
        "total_tokens": prompt_tokens + result.num_new_tokens,
    }


def _failure(event) -> APIError:
    if isinstance(event.error, WorkerClosed):
        return APIError(503, str(event.error), "shutting_down")
    if event.kind == "cancelled":
        return APIError(503, "the request was cancelled", "cancelled")
    return APIError(500, f"generation failed: {type(event.error).__name__}: {event.error}", "generation_failed")


def build_router(ctx: ServerContext) -> APIRouter:
    """The API's routes: status (`/health`, `/v1/models`), files (`/v1/files`), chat (`/v1/chat/completions`)."""
    router = APIRouter()
    _add_status_routes(router, ctx)
    _add_file_routes(router, ctx)
    _add_chat_route(router, ctx)
    return router


def _add_status_routes(router: APIRouter, ctx: ServerContext) -> None:
    @router.get("/health")
    async def health() -> dict:
        return {"status": "ok", "models": [m.id for m in ctx.models], "queue": ctx.worker.snapshot()}

    @router.get("/v1/models")
    async def models() -> dict:
        created = int(time.time())
        return {
            "object": "list",
            "data": [
                {"id": m.id, "object": "model", "created": created, "owned_by": "mobilevideogpt"} for m in ctx.models
            ],
        }


def _add_file_routes(router: APIRouter, ctx: ServerContext) -> None:
    """Upload (multipart), list, look up and delete the videos of `POST /v1/files`."""

    @router.post("/v1/files")
    async def upload_file(request: Request) -> JSONResponse:
        return JSONResponse((await save_upload(ctx, request)).to_openai())

    @router.get("/v1/files")
    async def list_files() -> dict:
        return {"object": "list", "data": [u.to_openai() for u in ctx.uploads.list()]}

    @router.get("/v1/files/{file_id}")
    async def get_file(file_id: str) -> dict:
        return ctx.uploads.get(file_id).to_openai()

    @router.delete("/v1/files/{file_id}")
    async def delete_file(file_id: str) -> dict:
        return {"id": ctx.uploads.delete(file_id).id, "object": "file", "deleted": True}


async def save_upload(ctx: ServerContext, request: Request):
    """Store the multipart request's `file` field in the uploads folder, streamed in chunks."""
    try:
        form = await request.form(max_files=1, max_fields=8)
    except APIError:
        raise
    except Exception as err:
        raise APIError(
            400, f"send the video as multipart/form-data with a `file` field ({err})", "invalid_body"
        ) from err
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise APIError(400, "multipart field `file` with the video is missing", "missing_file", "file")

        async def chunks() -> AsyncIterator[bytes]:
            while chunk := await upload.read(CHUNK_BYTES):
                yield chunk

        purpose = form.get("purpose")
        return await ctx.uploads.save(
            chunks(), upload.filename or "", purpose if isinstance(purpose, str) else "user_data"
        )
    finally:
        await form.close()


def _add_chat_route(router: APIRouter, ctx: ServerContext) -> None:
    @router.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        chat = parse_chat_request(await read_json_body(request), ctx)
        job = await queue_job(ctx, chat)
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        if chat.stream:
            return StreamingResponse(
                stream_answer(job, chat, completion_id, created),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                # Also when the client leaves before the stream starts (the generator's `finally` never runs).
                background=BackgroundTask(job.cancel),
            )
        return await complete_answer(request, job, chat, completion_id, created)


async def read_json_body(request: Request) -> Any:
    """The request's JSON body; 415 unless it is sent as JSON, 400 when it does not parse."""
    # Browsers send only "simple" content types across sites without asking first: requiring JSON keeps
    # pages from other origins from queueing work here.
    if not request.headers.get("content-type", "").lower().startswith("application/json"):
        raise APIError(
            415, "send the request as JSON with the header Content-Type: application/json", "invalid_content_type"
        )
    try:
        # A body with an inline video can be large: parse it off the event loop.
        return await asyncio.to_thread(json.loads, await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise APIError(400, f"the request body is not valid JSON: {err}", "invalid_json") from err


def locate_video(ctx: ServerContext, url: str) -> tuple[Path, bool]:
    """The file a video URL names, and whether it is a temporary copy (of a data URL) to delete."""
    if url.startswith("data:"):
        return ctx.uploads.write_temporary(decode_data_url(url, ctx.max_upload_bytes)), True
    if url.startswith("file:"):
        try:
            path = ctx.roots.resolve_file_url(url)
        except PathNotAllowed as err:
            raise APIError(403, str(err), "path_not_allowed", "messages") from err
        except ValueError as err:
            raise APIError(400, str(err), "invalid_video_url", "messages") from err
        if not path.is_file():
            raise APIError(404, f"no such file: {url[:200]}", "file_not_found", "messages")
        return path, False
    if FILE_ID.fullmatch(url):
        return ctx.uploads.get(url).path, False
    raise APIError(
        400,
        "video_url.url must be a data: URL, the id of a file uploaded with POST /v1/files, or a file:// path "
        "under an allowed directory; this server does not fetch remote URLs",
        "invalid_video_url",
        "messages",
    )


async def queue_job(ctx: ServerContext, chat: ChatRequest) -> Job:
    """Take a place in the queue on arrival, then fetch and decode the video (off the event loop)."""
    try:
        job = ctx.worker.reserve()
    except QueueFull as err:
        raise queue_full_error(err) from err
    except WorkerClosed as err:
        raise APIError(503, str(err), "shutting_down") from err
    try:
        path, temporary = await asyncio.to_thread(locate_video, ctx, chat.video_url)
    except BaseException:
        job.cancel()
        raise
    try:
        return await prepare(job, chat.model, path, chat.prompt, **chat.settings())
    except (VideoDecodeError, NotAVideoError) as err:
        raise video_error(err) from err
    finally:
        if temporary:
            path.unlink(missing_ok=True)


async def complete_answer(request: Request, job: Job, chat: ChatRequest, completion_id: str, created: int):
    """The whole answer as one `chat.completion`; the job is cancelled if the client leaves before it is done."""

    async def cancel_when_gone() -> None:
        while not await request.is_disconnected():
            await asyncio.sleep(DISCONNECT_POLL_S)
        job.cancel()

    watcher = asyncio.create_task(cancel_when_gone())
    try:
        async for event in job.events():
            if event.kind == "finished":
                result = event.result
                return JSONResponse(
                    {
                        "id": completion_id,
                        "object": "chat.completion",
                        "created": created,
                        "model": chat.model.id,
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": result.text},
                                "logprobs": None,
                                "finish_reason": result.finish_reason,
                            }
                        ],
                        "usage": _usage(chat, result),
                        "timings": result.timings.to_dict(),
                    }
                )
            if event.final:
                return _failure(event).response()
    finally:
        watcher.cancel()
        job.cancel()


async def stream_answer(job: Job, chat: ChatRequest, completion_id: str, created: int) -> AsyncIterator[str]:
    """The answer as server-sent `chat.completion.chunk` events, then `[DONE]`."""
    # Cancelled by Starlette when the client disconnects: `finally` then frees the model.
    try:
        yield _chunk(completion_id, created, chat.model.id, {"role": "assistant", "content": ""})
        async for event in job.events():
            if event.kind == "queued":
                yield f": queued, {event.ahead} requests ahead\n\n"
            elif event.kind == "text":
                yield _chunk(completion_id, created, chat.model.id, {"content": event.text})
            elif event.kind == "finished":
                result = event.result
                timings = result.timings.to_dict()
                yield _chunk(completion_id, created, chat.model.id, {}, result.finish_reason, timings=timings)
                if chat.include_usage:
                    usage = {
                        "id": completion_id,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": chat.model.id,
                        "choices": [],
                        "usage": _usage(chat, result),
                    }
                    yield f"data: {json.dumps(usage)}\n\n"
            elif event.final:
                yield f"data: {json.dumps(_failure(event).body())}\n\n"
        yield "data: [DONE]\n\n"
    finally:
        job.cancel()
