"""One thread owns the models; requests wait in a bounded queue, served strictly in order of arrival.

A request takes its place in the queue as soon as it arrives (`ModelWorker.reserve`, which refuses with
`QueueFull` beyond `queue_size` waiting requests), is then prepared outside the model thread (video decoded,
prompt checked) and handed over with `Job.submit`, or withdrawn with `Job.cancel`. The worker serves the
oldest request and waits for it if it is still being prepared, so a quick request never overtakes an earlier
one. Every job reports to the asyncio loop that reserved it: its place in the queue whenever that changes,
the answer's text pieces, and one final event.

Cancelling a running job (a client that went away) stops its generation within one token: a forward
pre-hook on each model's output layer, which runs once per generated token, raises when the running job is
cancelled, so the model is free for the next request at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import math
import statistics
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from ..data.video import VideoInputs
from .models import ServedModel

logger = logging.getLogger(__name__)

# Retry-After before any request has finished (seconds).
DEFAULT_RETRY_AFTER_S = 5
RECENT_DURATIONS = 20


class QueueFull(RuntimeError):
    """The queue holds `queue_size` waiting requests already."""

    def __init__(self, waiting: int, retry_after_s: int) -> None:
        self.waiting = waiting
        self.retry_after_s = retry_after_s
        super().__init__(
            f"the server is busy: {waiting} requests are waiting for the model (the queue's limit); "
            f"retry in about {retry_after_s} s"
        )


class WorkerClosed(RuntimeError):
    """The server is shutting down."""


class GenerationCancelled(Exception):
    """Raised inside generation when the running job was cancelled."""


@dataclass
class Request:
    """What the worker needs for one answer; the video is already decoded."""

    model: ServedModel
    inputs: VideoInputs
    prompt: str
    decode_s: float
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    min_new_tokens: int = 0
    seed: int | None = None
    system_prompt: str | None = None


@dataclass(frozen=True)
class Event:
    """kind: "queued" (ahead = requests to be served before this one), "started", "text", and one final
    event: "finished" (result), "failed" (error) or "cancelled"."""

    kind: str
    ahead: int | None = None
    text: str | None = None
    result: Any = None  # ChatResult
    error: BaseException | None = None

    @property
    def final(self) -> bool:
        return self.kind in ("finished", "failed", "cancelled")


class Job:
    """One request's place in the queue and its events (consume them with `async for e in job.events()`)."""

    def __init__(self, worker: ModelWorker, sequence: int, loop: asyncio.AbstractEventLoop) -> None:
        self.sequence = sequence  # arrival number, 1 for the server's first request
        self.request: Request | None = None
        self.state = "preparing"  # → "ready" → "running" → "done"
        self.cancelled = False
        self.ahead: int | None = None
        self._worker = worker
        self._loop = loop
        self._events: asyncio.Queue[Event] = asyncio.Queue()

    def submit(self, request: Request) -> None:
        """Hand the prepared request to the worker (ignored once cancelled)."""
        self._worker._submit(self, request)

    def cancel(self) -> None:
        """Withdraw the request or stop its generation; a no-op once it has finished."""
        self._worker._cancel(self)

    async def events(self) -> AsyncIterator[Event]:
        """The job's events up to and including the final one."""
        while True:
            event = await self._events.get()
            yield event
            if event.final:
                return

    def _emit(self, event: Event) -> None:
        try:
            self._loop.call_soon_threadsafe(self._events.put_nowait, event)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass


class ModelWorker:
    """The bounded queue in front of the models and the thread that runs them."""

    def __init__(self, models: list[ServedModel], queue_size: int) -> None:
        if queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, got {queue_size}")
        self.models = {m.id: m for m in models}
        self.queue_size = queue_size
        self._condition = threading.Condition()
        self._pending: deque[Job] = deque()
        self._running: Job | None = None
        self._sequence = itertools.count(1)
        self._closed = False
        self._durations: deque[float] = deque(maxlen=RECENT_DURATIONS)
        self._counts = {"served": 0, "cancelled": 0, "failed": 0}
        self._hooks = [
            m.chat.model.get_output_embeddings().register_forward_pre_hook(self._stop_if_cancelled) for m in models
        ]
        self._thread = threading.Thread(target=self._serve, name="mvgpt-model-worker", daemon=True)
        self._thread.start()

    # ---- called from request handlers (event loop threads) ----

    def reserve(self) -> Job:
        """A place at the end of the queue, for the running asyncio loop. Raises `QueueFull`, `WorkerClosed`."""
        loop = asyncio.get_running_loop()
        with self._condition:
            if self._closed:
                raise WorkerClosed("the server is shutting down")
            if len(self._pending) >= self.queue_size:
                raise QueueFull(len(self._pending), self._retry_after_s())
            job = Job(self, next(self._sequence), loop)
            self._pending.append(job)
            self._announce_positions()
            return job

    def snapshot(self) -> dict[str, Any]:
        """The queue as `/health` reports it."""
        with self._condition:
            running = self._running
            return {
                "waiting": len(self._pending),
                "capacity": self.queue_size,
                "running": None
                if running is None
                else {"sequence": running.sequence, "model": running.request.model.id},
                **self._counts,
            }

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop: waiting requests fail with "shutting down", the running one is cancelled."""
        with self._condition:
            self._closed = True
            for job in self._pending:
                job.state = "done"
                job._emit(Event("failed", error=WorkerClosed("the server is shutting down")))
            self._pending.clear()
            if self._running is not None:
                self._running.cancelled = True
            self._condition.notify_all()
        self._thread.join(timeout_s)
        for hook in self._hooks:
            hook.remove()

    # ---- job callbacks ----

    def _submit(self, job: Job, request: Request) -> None:
        with self._condition:
            if job.state != "preparing":
                return
            job.request = request
            job.state = "ready"
            self._condition.notify_all()

    def _cancel(self, job: Job) -> None:
        with self._condition:
            if job.state == "done" or job.cancelled:
                return
            job.cancelled = True
            if job in self._pending:
                self._pending.remove(job)
                job.state = "done"
                self._counts["cancelled"] += 1
                job._emit(Event("cancelled"))
                self._announce_positions()
                self._condition.notify_all()

    # ---- the model thread ----

    def _announce_positions(self) -> None:
        """Tell every waiting job how many requests are ahead of it, when that changed (lock held)."""
        busy = 1 if self._running is not None else 0
        for index, job in enumerate(self._pending):
            ahead = index + busy
            if job.ahead != ahead:
                job.ahead = ahead
                job._emit(Event("queued", ahead=ahead))

    def _retry_after_s(self) -> int:
        if not self._durations:
            return DEFAULT_RETRY_AFTER_S
        return max(1, math.ceil(statistics.fmean(self._durations) * (len(self._pending) + 1)))

    def _stop_if_cancelled(self, module, args) -> None:
        job = self._running
        if job is not None and job.cancelled:
            raise GenerationCancelled()

    def _next_job(self) -> Job | None:
        with self._condition:
            while not self._closed and not (self._pending and self._pending[0].state == "ready"):
                self._condition.wait()
            if self._closed:
                return None
            job = self._pending.popleft()
            job.state = "running"
            self._running = job
            self._announce_positions()
            return job

    def _serve(self) -> None:
        while (job := self._next_job()) is not None:
            job._emit(Event("started"))
            outcome, started = "failed", time.perf_counter()
            try:
                event = self._answer(job)
                outcome = event.kind
            except GenerationCancelled:
                outcome, event = "cancelled", Event("cancelled")
            except Exception as err:
                logger.exception("request %d failed", job.sequence)
                event = Event("failed", error=err)
            with self._condition:
                self._running = None
                job.state = "done"
                self._counts["served" if outcome == "finished" else outcome] += 1
                if outcome == "finished":
                    self._durations.append(time.perf_counter() - started)
                job._emit(event)
                self._announce_positions()

    def _answer(self, job: Job) -> Event:
        request = job.request
        result = request.model.chat.answer(
            request.inputs,
            request.prompt,
            max_new_tokens=request.max_new_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            min_new_tokens=request.min_new_tokens,
            seed=request.seed,
            system_prompt=request.system_prompt,
            on_text=lambda text: job._emit(Event("text", text=text)),
        )
        # The video was decoded before the request reached the model; count that time where it belongs.
        result.timings = dataclasses.replace(
            result.timings,
            video_decode_s=request.decode_s,
            total_s=result.timings.total_s + request.decode_s,
        )
        return Event("finished", result=result)


async def prepare(job: Job, model: ServedModel, video_path, prompt: str, **settings) -> Job:
    """Decode the video off the event loop and hand the request to the worker.

    Raises `VideoDecodeError` / `NotAVideoError` for a bad video; the job's place is given back on any failure,
    so a bad request never holds up the queue.
    """
    try:
        inputs, decode_s = await asyncio.to_thread(model.load_inputs, video_path)
        job.submit(Request(model, inputs, prompt, decode_s, **settings))
    except BaseException:
        job.cancel()
        raise
    return job


async def start_job(worker: ModelWorker, model: ServedModel, video_path, prompt: str, **settings) -> Job:
    """Take a place in arrival order (`QueueFull` / `WorkerClosed` when there is none), then `prepare`."""
    return await prepare(worker.reserve(), model, video_path, prompt, **settings)
