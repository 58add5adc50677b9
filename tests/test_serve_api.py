"""`mvgpt serve`'s OpenAI-compatible API, against a real server process on the tiny fast checkpoint.

One server serves the whole module (queue of 3 waiting requests, 1 MiB uploads, one allowed directory).
Random tiny models write junk, so the tests check structure — chunks, finish reasons, token counts, status
codes, error objects, order — never the words.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import socket
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.serve_server import REPO, start_server, write_video

MAX_UPLOAD_MB = 1
QUEUE_SIZE = 3
PROMPT = "Analyze this squats video and provide corrective feedback."


@pytest.fixture(scope="module")
def allowed(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("allowed")
    write_video(root / "clip.mp4")
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory, mvgpt_fast_checkpoint, allowed):
    server = start_server(
        tmp_path_factory.mktemp("serve_api"),
        "--model_path", str(mvgpt_fast_checkpoint),
        "--allow-root", str(allowed),
        "--max-upload-mb", str(MAX_UPLOAD_MB),
        "--queue-size", str(QUEUE_SIZE),
    )  # fmt: skip
    yield server
    server.stop()


@pytest.fixture(scope="module")
def model_id(mvgpt_fast_checkpoint) -> str:
    return str(mvgpt_fast_checkpoint)


@pytest.fixture(scope="module")
def video_bytes(allowed) -> bytes:
    return (allowed / "clip.mp4").read_bytes()


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)


def data_url(data: bytes, mime: str = "video/mp4") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def user_message(url: str, text: str = PROMPT) -> list[dict]:
    return [
        {"role": "user", "content": [{"type": "text", "text": text}, {"type": "video_url", "video_url": {"url": url}}]}
    ]


def chat_body(model_id: str, url: str, **extra) -> dict:
    return {"model": model_id, "messages": user_message(url), "max_tokens": 4, **extra}


def post(server, body, timeout: float = 120) -> httpx.Response:
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    headers = {"Content-Type": "application/json"}
    return httpx.post(f"{server.url}/v1/chat/completions", content=content, headers=headers, timeout=timeout)


def assert_error(response: httpx.Response, status: int, code: str | None = None, fragment: str = "") -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert error["message"] and fragment in error["message"], error
    if code is not None:
        assert error["code"] == code, error
    return error


def health(server) -> dict:
    return httpx.get(f"{server.url}/health", timeout=10).json()


def wait_until(condition, timeout_s: float, message: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(message)


def test_health_and_models(server, client, model_id):
    assert server.url.startswith("http://127.0.0.1:"), "the server must listen on 127.0.0.1 by default"
    status = health(server)
    assert status["status"] == "ok" and status["models"] == [model_id]
    assert status["queue"]["capacity"] == QUEUE_SIZE and status["queue"]["running"] is None
    assert [m.id for m in client.models.list().data] == [model_id]


def test_openai_client_answers_with_usage_and_timings(client, model_id, video_bytes):
    completion = client.chat.completions.create(
        model=model_id,
        messages=user_message(data_url(video_bytes)),
        max_tokens=6,
        temperature=1.0,
        seed=3,
        extra_body={"min_tokens": 6},
    )
    choice = completion.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason == "length"
    usage = completion.usage
    assert usage.completion_tokens == 6
    # The prompt is the rendered chat text plus the video's visual tokens (674 at the fast geometry).
    assert usage.prompt_tokens > 674 and usage.total_tokens == usage.prompt_tokens + 6
    timings = completion.model_extra["timings"]
    assert timings["new_tokens"] == 6 and timings["video_decode_s"] > 0 and timings["time_to_first_token_s"] > 0


def test_openai_client_streams_the_same_answer(client, model_id, video_bytes):
    settings = {"model": model_id, "max_tokens": 8, "temperature": 1.0, "seed": 11, "extra_body": {"min_tokens": 8}}
    whole = client.chat.completions.create(messages=user_message(data_url(video_bytes)), **settings)
    chunks = list(
        client.chat.completions.create(
            messages=user_message(data_url(video_bytes)),
            stream=True,
            stream_options={"include_usage": True},
            **settings,
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) >= 2, "the answer arrived in one piece, not streamed"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 8
    assert len({c.id for c in chunks}) == 1
    # Same seed, same settings: the streamed pieces add up to the non-streamed answer.
    assert "".join(pieces).strip() == whole.choices[0].message.content


def test_raw_sse_stream_format(server, model_id, video_bytes):
    body = chat_body(model_id, data_url(video_bytes), stream=True, temperature=1.0, min_tokens=4)
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=120) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    data = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["timings"]["new_tokens"] == 4
    # Queue positions travel as SSE comments, which clients ignore.
    assert all(line.startswith((":", "data: ")) for line in lines)


def test_uploaded_file_id(client, model_id, video_bytes):
    uploaded = client.files.create(file=("squat.mp4", video_bytes, "video/mp4"), purpose="user_data")
    assert uploaded.id.startswith("file-") and uploaded.bytes == len(video_bytes) and uploaded.filename == "squat.mp4"
    assert uploaded.id in [f.id for f in client.files.list().data]
    completion = client.chat.completions.create(model=model_id, messages=user_message(uploaded.id), max_tokens=3)
    assert completion.usage.completion_tokens >= 1
    assert client.files.delete(uploaded.id).deleted
    with pytest.raises(openai.NotFoundError, match="no uploaded file"):
        client.chat.completions.create(model=model_id, messages=user_message(uploaded.id), max_tokens=3)


def test_uploads_stay_private(server, client, video_bytes):
    uploaded = client.files.create(file=("private.mp4", video_bytes, "video/mp4"), purpose="user_data")
    stored = list(server.tmpdir.glob(f"mvgpt-serve-*/uploads/{uploaded.id}"))
    assert len(stored) == 1
    assert stored[0].stat().st_mode & 0o077 == 0 and stored[0].parent.stat().st_mode & 0o077 == 0
    assert stored[0].parents[1].stat().st_mode & 0o077 == 0
    client.files.delete(uploaded.id)
    assert not stored[0].exists()


def test_file_urls_only_inside_allowed_roots(server, model_id, allowed, tmp_path):
    inside = allowed / "clip.mp4"
    assert post(server, chat_body(model_id, inside.as_uri())).status_code == 200
    outside = write_video(tmp_path / "outside.mp4")
    assert_error(post(server, chat_body(model_id, outside.as_uri())), 403, "path_not_allowed")
    assert_error(post(server, chat_body(model_id, "file:///etc/passwd")), 403, "path_not_allowed")
    dotdot = f"file://{allowed}/../{outside.parent.name}/outside.mp4"
    assert_error(post(server, chat_body(model_id, dotdot)), 403, "path_not_allowed")
    link = allowed / "link-to-outside.mp4"
    link.symlink_to(outside)
    try:
        assert_error(post(server, chat_body(model_id, link.as_uri())), 403, "path_not_allowed")
    finally:
        link.unlink()
    assert_error(post(server, chat_body(model_id, (allowed / "missing.mp4").as_uri())), 404, "file_not_found")
    assert_error(post(server, chat_body(model_id, "https://example.com/x.mp4")), 400, "invalid_video_url")


def test_the_page_serves_no_file_outside_the_allowed_roots(server, allowed, mvgpt_fast_checkpoint):
    def fetch(path) -> int:
        return httpx.get(f"{server.url}/gradio_api/file={path}", timeout=30).status_code

    assert fetch(allowed / "clip.mp4") == 200
    assert fetch("/etc/passwd") == 403
    assert fetch(REPO / "README.md") == 403  # the server's working directory
    assert fetch(mvgpt_fast_checkpoint / "config.json") == 403
    assert fetch(f"{allowed}/../{allowed.name}-outside/x") in (403, 404)


def test_other_web_sites_cannot_read_answers(server, model_id, allowed):
    """No CORS grant: a page from another origin open in the user's browser cannot read the API's answers,
    nor make the model work."""
    origin = {"Origin": "http://attacker.example"}
    assert "access-control-allow-origin" not in httpx.get(f"{server.url}/v1/models", headers=origin).headers
    body = json.dumps(chat_body(model_id, (allowed / "clip.mp4").as_uri()))
    headers = {**origin, "Content-Type": "application/json"}
    response = httpx.post(f"{server.url}/v1/chat/completions", content=body, headers=headers, timeout=60)
    assert "access-control-allow-origin" not in response.headers
    # What a page may send without asking first (a "simple" request) is refused before it queues any work.
    simple = {**origin, "Content-Type": "text/plain"}
    refused = httpx.post(f"{server.url}/v1/chat/completions", content=body, headers=simple, timeout=60)
    assert_error(refused, 415, "invalid_content_type")
    preflight = httpx.options(
        f"{server.url}/v1/chat/completions",
        headers={**origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"},
    )
    assert "access-control-allow-origin" not in preflight.headers


def test_bad_videos_are_refused_and_the_worker_keeps_going(server, client, model_id, video_bytes, tmp_path):
    import cv2
    import numpy as np

    png = tmp_path / "still.png"
    cv2.imwrite(str(png), np.zeros((64, 64, 3), np.uint8))
    bad = {
        "text.mp4": b"this is not a video\n" * 50,
        "random.mp4": os.urandom(20_000),
        "truncated.mp4": video_bytes[: len(video_bytes) // 3],
        "still.png": png.read_bytes(),
    }
    for name, data in bad.items():
        response = httpx.post(
            f"{server.url}/v1/files", files={"file": (name, data)}, data={"purpose": "user_data"}, timeout=60
        )
        assert_error(response, 400, "invalid_video", "not a readable video")
        assert_error(post(server, chat_body(model_id, data_url(data))), 400, "invalid_video", "not readable")
    assert_error(post(server, chat_body(model_id, "data:video/mp4;base64,@@@not-base64")), 400, "invalid_data_url")
    assert_error(httpx.post(f"{server.url}/v1/files", content=b"x", timeout=30), 400, "missing_file")
    # None of it reached the model or left files behind; a good request is served at once.
    assert list(server.tmpdir.glob("mvgpt-serve-*/uploads/*")) == []
    started = time.monotonic()
    assert client.chat.completions.create(model=model_id, messages=user_message(data_url(video_bytes)), max_tokens=2)
    assert time.monotonic() - started < 30
    assert health(server)["queue"]["failed"] == 0


def test_uploads_over_the_limit_get_413(server, model_id, video_bytes):
    limit = MAX_UPLOAD_MB * 2**20
    # Declared too large: refused before it is stored.
    huge = video_bytes + os.urandom(3 * limit)
    response = httpx.post(
        f"{server.url}/v1/files", files={"file": ("huge.mp4", huge)}, data={"purpose": "user_data"}, timeout=60
    )
    assert_error(response, 413, "file_too_large")
    # Within the body allowance, over the video limit: counted while stored.
    big = video_bytes + os.urandom(limit // 2 + limit)
    response = httpx.post(
        f"{server.url}/v1/files", files={"file": ("big.mp4", big)}, data={"purpose": "user_data"}, timeout=60
    )
    assert_error(response, 413, "file_too_large")
    assert_error(post(server, chat_body(model_id, data_url(video_bytes + os.urandom(limit)))), 413, "file_too_large")
    assert_error(post(server, chat_body(model_id, data_url(huge))), 413, "file_too_large")
    assert list(server.tmpdir.glob("mvgpt-serve-*/uploads/*")) == []


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ("{not json", 400, "invalid_json"),
        ("[1, 2]", 400, "invalid_body"),
        ({"model": "MODEL"}, 400, "invalid_messages"),
        ({"model": "no-such-model", "messages": []}, 404, "model_not_found"),
        ({"model": "MODEL", "messages": [{"role": "user", "content": "just text"}]}, 400, "missing_video"),
        ({"model": "MODEL", "messages": "URL-ONLY"}, 400, "missing_prompt"),
        ({"model": "MODEL", "messages": "URL", "temperature": -1}, 400, "invalid_value"),
        ({"model": "MODEL", "messages": "URL", "top_p": 0}, 400, "invalid_value"),
        ({"model": "MODEL", "messages": "URL", "max_tokens": 0}, 400, "invalid_value"),
        ({"model": "MODEL", "messages": "URL", "max_tokens": "many"}, 400, "invalid_type"),
        ({"model": "MODEL", "messages": "URL", "stream": "yes"}, 400, "invalid_type"),
        ({"model": "MODEL", "messages": "URL", "n": 2}, 400, "invalid_value"),
        ({"model": "MODEL", "messages": "URL", "stop": ["\n"]}, 400, "unsupported_parameter"),
        ({"model": "MODEL", "messages": "TWO-TURNS"}, 400, "invalid_messages"),
    ],
)
def test_malformed_requests_get_openai_errors(server, model_id, allowed, body, status, code):
    url = (allowed / "clip.mp4").as_uri()
    if isinstance(body, dict):
        body = dict(body)
        if body.get("model") == "MODEL":
            body["model"] = model_id
        messages = body.get("messages")
        if messages == "URL":
            body["messages"] = user_message(url)
        elif messages == "URL-ONLY":
            body["messages"] = [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": url}}]}]
        elif messages == "TWO-TURNS":
            body["messages"] = user_message(url) + [{"role": "assistant", "content": "ok"}] + user_message(url)
    assert_error(post(server, body), status, code)


@contextlib.contextmanager
def model_held(server, model_id: str, video_bytes: bytes):
    """Keep the model busy with a long streamed answer until the block ends (then the client leaves)."""
    body = chat_body(model_id, data_url(video_bytes), stream=True, max_tokens=3000, min_tokens=3000, temperature=1.0)
    with (
        httpx.Client(timeout=120) as client,
        client.stream("POST", f"{server.url}/v1/chat/completions", json=body) as s,
    ):
        lines = s.iter_lines()
        assert any(line.startswith("data: ") and '"content": "' in line and '"role"' not in line for line in lines)
        assert health(server)["queue"]["running"] is not None
        yield lines


def queue_in_order(server, send, count: int, already_waiting: int = 0) -> list[threading.Thread]:
    """Start `send(i)` for i < count, each once the previous one holds its place in the queue."""
    threads = []
    for index in range(count):
        threads.append(threading.Thread(target=send, args=(index,)))
        threads[-1].start()
        expected = already_waiting + index + 1
        wait_until(lambda n=expected: health(server)["queue"]["waiting"] == n, 30, f"request {index} never queued")
    return threads


def test_concurrent_requests_are_all_answered_in_order_of_arrival(server, model_id, video_bytes):
    before = health(server)["queue"]
    finished: dict[int, float] = {}
    responses: dict[int, httpx.Response] = {}

    def send(index: int) -> None:
        body = chat_body(model_id, data_url(video_bytes), max_tokens=32, min_tokens=32, temperature=1.0, seed=index)
        responses[index] = post(server, body)
        finished[index] = time.monotonic()

    with model_held(server, model_id, video_bytes):
        threads = queue_in_order(server, send, QUEUE_SIZE)  # the queue's whole capacity, waiting at once
    for thread in threads:
        thread.join(120)
    assert sorted(responses) == list(range(QUEUE_SIZE)), "a request got no answer"
    for response in responses.values():
        assert response.status_code == 200, response.text
        assert response.json()["usage"]["completion_tokens"] == 32
    assert sorted(finished, key=finished.get) == list(range(QUEUE_SIZE)), "answers finished out of arrival order"
    after = health(server)["queue"]
    assert after["served"] == before["served"] + QUEUE_SIZE and after["failed"] == before["failed"]


def open_request(server, body: dict) -> socket.socket:
    """A chat request sent on a raw connection, so the test decides when the client goes away."""
    host, port = server.url.removeprefix("http://").split(":")
    data = json.dumps(body).encode()
    connection = socket.create_connection((host, int(port)))
    head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
    connection.sendall(f"{head}Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return connection


def test_full_queue_503_and_disconnect_frees_the_model(server, model_id, video_bytes):
    before = health(server)["queue"]
    answered: dict[int, tuple[int, float]] = {}

    def send(index: int) -> None:
        response = post(server, chat_body(model_id, data_url(video_bytes), max_tokens=3))
        answered[index] = (response.status_code, time.monotonic())

    with model_held(server, model_id, video_bytes) as lines:
        patient = queue_in_order(server, send, QUEUE_SIZE - 1)
        impatient = open_request(server, chat_body(model_id, data_url(video_bytes), max_tokens=3))
        wait_until(lambda: health(server)["queue"]["waiting"] == QUEUE_SIZE, 30, "the last place was never taken")

        refused = post(server, chat_body(model_id, data_url(video_bytes)))
        assert_error(refused, 503, "queue_full", "retry")
        assert int(refused.headers["Retry-After"]) >= 1

        # A waiting client that goes away gives its place back without reaching the model.
        impatient.close()
        wait_until(
            lambda: health(server)["queue"]["waiting"] == QUEUE_SIZE - 1,
            10,
            "a disconnected waiting request kept its place",
        )
        for _ in range(3):  # a few more tokens, then the streaming client leaves too
            next(lines)
    left_at = time.monotonic()

    for thread in patient:
        thread.join(120)
    assert [answered[i][0] for i in range(QUEUE_SIZE - 1)] == [200] * (QUEUE_SIZE - 1)
    # 3000 tokens take far longer than this on any CPU: the abandoned generation was stopped.
    delay = answered[0][1] - left_at
    assert delay < 15, f"the model was busy {delay:.1f} s after the client left"
    after = wait_until(
        lambda: (q := health(server)["queue"])["running"] is None and q, 15, "the worker never went idle"
    )
    assert after["waiting"] == 0 and after["failed"] == before["failed"]
    assert after["cancelled"] == before["cancelled"] + 2


@pytest.mark.parametrize("case", ["missing allowed root", "port in use"])
def test_command_errors_are_one_line_before_any_model_loads(case, tmp_path, capsys):
    from mobilevideogpt.cli import serve

    parser = argparse.ArgumentParser()
    serve.configure(parser)
    # A model path that cannot load: reaching the model would be a different error.
    args = ["--model_path", str(tmp_path / "no-model")]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        if case == "port in use":
            taken.listen()
            args += ["--port", str(taken.getsockname()[1])]
            expected = "choose another --port"
        else:
            args += ["--port", "0", "--allow-root", str(tmp_path / "missing")]
            expected = "--allow-root"
        code = serve.run(parser.parse_args(args))
    out, err = capsys.readouterr()
    assert code == 1
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and expected in errors[0], err
    assert "Traceback" not in err and "Loading" not in err and "Serving" not in out


def test_stopping_removes_private_files(server):
    """Last in the module: Ctrl-C stops the server cleanly and its private directory goes with it."""
    assert list(server.tmpdir.glob("mvgpt-serve-*"))
    assert server.stop() == 0, server.log_tail()
    assert list(server.tmpdir.glob("mvgpt-serve-*")) == []
    assert "Traceback" not in server.log_tail(), server.log_tail()
