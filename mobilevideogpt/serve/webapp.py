"""The page (Gradio): ask about a video, and browse a dataset with its videos, references and predictions.

"Ask about a video": upload a video or record one with the webcam, pick the exercise (the QVED training
prompt for that class, the generic prompt, or free text), and the answer streams in with its timings; with
`--compare` both models answer, side by side. "Dataset browser": a split file (`qved_*.json` under an
allowed directory), a page of its samples, and the selected sample's video beside its reference answer,
the answer recorded by an evaluation (`predictions.jsonl`), and on demand the served models' answers.

Every request goes through the server's one queue (the page shows the place in it); Gradio's own queue is
not limited (`concurrency_limit=None`), so the position shown is the model's.
"""

from __future__ import annotations

import functools
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from ..data.video import VideoDecodeError
from ..evaluation.predictions import EvalSample
from ..qved import exercise_prompt
from .context import ServerContext
from .datasets import (
    PREDICTIONS_PATTERN,
    SPLIT_PATTERN,
    DatasetError,
    display_name,
    exercise_of,
    find_files,
    open_predictions,
    open_split,
    recorded_prediction,
    sample_video,
)
from .models import NotAVideoError
from .prompts import exercise_choices
from .uploads import reason
from .worker import QueueFull, WorkerClosed, start_job

FREE_PROMPT = "free"
PAGE_SIZE = 10
DEFAULT_MAX_NEW_TOKENS = 256
CSS = """
.answer textarea { font-size: 1.05em; }
#ask-status, #dataset-status { min-height: 2em; }
"""


def format_timings(result) -> str:
    """decode · encoders · first token · tokens/s, as measured for one answer."""
    t = result.timings
    rate = f"{t.decode_tokens_per_s:.1f} tokens/s" if t.decode_tokens_per_s else "tokens/s n/a"
    return (
        f"decode {t.video_decode_s:.2f} s · encoders {t.encode_s:.2f} s · first token "
        f"{t.time_to_first_token_s:.2f} s · {rate} · {result.num_new_tokens} tokens ({result.finish_reason})"
    )


def _model_label(model) -> str:
    return f"{'Compared with' if model.role == 'compare' else 'Answer'}: {model.id}"


async def stream_answers(
    ctx: ServerContext, video_path: str | None, prompt: str, settings: dict
) -> AsyncIterator[tuple]:
    """(status, *answers, *timings) as the served models answer `prompt` about the video, one after the other."""
    count = len(ctx.models)
    answers, timings = [""] * count, [""] * count

    def view(status: str) -> tuple:
        return (status, *answers, *timings)

    if not video_path:
        yield view("**Upload a video or record one with the webcam first.**")
        return
    if not prompt or not prompt.strip():
        yield view("**Type a prompt, or pick an exercise to use its prompt.**")
        return
    yield view("Reading the video…")
    jobs = []
    status = "Queued…"
    try:
        for model in ctx.models:
            jobs.append(await start_job(ctx.worker, model, video_path, prompt.strip(), **settings))
        for index, (model, job) in enumerate(zip(ctx.models, jobs)):
            async for event in job.events():
                if event.kind == "queued":
                    status = (
                        f"**Waiting for the model** — queue position {event.ahead + 1} "
                        f"({event.ahead} request{'s' if event.ahead != 1 else ''} ahead of yours)."
                    )
                elif event.kind == "started":
                    status = f"Generating — {model.id}…"
                elif event.kind == "text":
                    answers[index] += event.text
                elif event.kind == "finished":
                    result = event.result
                    answers[index] = result.text or (
                        f"(no visible text: {result.num_new_tokens} tokens of whitespace or special tokens)"
                    )
                    timings[index] = format_timings(result)
                else:
                    timings[index] = f"**Failed:** {event.error or 'cancelled'}"
                yield view(status)
        yield view("**Done.**")
    except QueueFull as err:
        yield view(f"**Busy:** {err}.")
    except WorkerClosed as err:
        yield view(f"**Stopped:** {err}.")
    except (VideoDecodeError, NotAVideoError) as err:
        yield view(
            f"**This file cannot be used:** {reason(err)}. Upload a video file (e.g. .mp4, .webm, .mov) "
            "or record one with the webcam."
        )
    finally:
        for job in jobs:
            job.cancel()


def build_page(ctx: ServerContext) -> gr.Blocks:
    """The page: its header, the generation settings, the "Ask about a video" tab and the dataset browser."""
    browser = DatasetBrowser(ctx)
    with gr.Blocks(title="Mobile-VideoGPT", analytics_enabled=False, delete_cache=(600, 3600)) as page:
        _header(ctx.models)
        generation = _generation_settings()
        ask = _ask_tab(ctx.models)
        dataset = _dataset_tab(ctx.models, browser)
        _wire_ask_tab(ctx, ask, generation)
        _wire_dataset_browsing(page, browser, dataset)
        _wire_dataset_questions(ctx, browser, dataset, generation)
    return page


# ---- the parts every tab shares ----


@dataclass
class AnswerPanel:
    """A status line, then one answer box and one timings line per served model."""

    status: gr.Markdown
    answers: list[gr.Textbox]
    timings: list[gr.Markdown]

    @property
    def outputs(self) -> list:
        """What `stream_answers` fills, in its order."""
        return [self.status, *self.answers, *self.timings]


def _answer_panel(models, prefix: str) -> AnswerPanel:
    status = gr.Markdown(elem_id=f"{prefix}-status")
    boxes, times = [], []
    with gr.Row(equal_height=True):
        for index, model in enumerate(models):
            with gr.Column():
                boxes.append(
                    gr.Textbox(
                        label=_model_label(model),
                        lines=8,
                        max_lines=20,
                        interactive=False,
                        elem_id=f"{prefix}-answer-{index}",
                        elem_classes="answer",
                    )
                )
                times.append(gr.Markdown(elem_id=f"{prefix}-timings-{index}"))
    return AnswerPanel(status, boxes, times)


def _settings_of(max_new_tokens, temperature, top_p) -> dict:
    return {"max_new_tokens": int(max_new_tokens), "temperature": float(temperature), "top_p": float(top_p)}


def _header(models) -> None:
    compare = f" · compared with `{models[1].id}`" if len(models) > 1 else ""
    gr.Markdown(
        f"# Mobile-VideoGPT · exercise feedback\nServing `{models[0].id}`{compare}. "
        "The same models answer at `POST /v1/chat/completions` (OpenAI-compatible)."
    )


def _generation_settings() -> list[gr.Slider]:
    """The sliders every question reads: max new tokens, temperature, top-p (in `_settings_of`'s order)."""
    with gr.Accordion("Generation settings", open=False):
        with gr.Row():
            max_new_tokens = gr.Slider(
                1, 1024, value=DEFAULT_MAX_NEW_TOKENS, step=1, label="Max new tokens", elem_id="max-new-tokens"
            )
            temperature = gr.Slider(0, 2, value=0, step=0.05, label="Temperature (0 = greedy)", elem_id="temperature")
            top_p = gr.Slider(0.05, 1, value=1, step=0.05, label="Top-p (with temperature > 0)", elem_id="top-p")
    return [max_new_tokens, temperature, top_p]


# ---- "Ask about a video" ----


@dataclass
class AskTab:
    video: gr.Video
    preview: gr.State  # {"name", "path"}: the player shows a playable copy named `name` of the upload at `path`
    exercise: gr.Dropdown
    prompt: gr.Textbox
    ask: gr.Button
    panel: AnswerPanel


def _ask_tab(models) -> AskTab:
    with gr.Tab("Ask about a video", id="ask"):
        with gr.Row():
            with gr.Column(scale=1):
                video = gr.Video(sources=["upload", "webcam"], label="Exercise video", elem_id="ask-video", height=320)
                preview = gr.State(None)
                exercise = gr.Dropdown(
                    choices=[*exercise_choices(), ("Free prompt (type it below)", FREE_PROMPT)],
                    value="",
                    label="Exercise",
                    elem_id="ask-exercise",
                )
                prompt = gr.Textbox(value=exercise_prompt(None), label="Prompt", lines=2, elem_id="ask-prompt")
                ask = gr.Button("Get feedback", variant="primary", elem_id="ask-button")
            with gr.Column(scale=2):
                panel = _answer_panel(models, "ask")
    return AskTab(video, preview, exercise, prompt, ask, panel)


def _wire_ask_tab(ctx: ServerContext, tab: AskTab, generation: list[gr.Slider]) -> None:
    """The exercise fills the prompt, an upload is swapped for a playable copy, the button streams the answers."""
    tab.exercise.change(
        lambda choice: "" if choice == FREE_PROMPT else exercise_prompt(choice or None),
        inputs=tab.exercise,
        outputs=tab.prompt,
        api_visibility="private",
    )

    def show_playable(path, shown):
        """Swap an upload browsers cannot play (e.g. MPEG-4 Part 2) for a playable copy; the model still
        reads the original. A file that is no video is reported at once."""
        if not path:
            return gr.skip(), None, ""
        if shown and Path(path).name == shown["name"]:
            return gr.skip(), shown, gr.skip()
        try:
            playable = ctx.playable.get(path)
        except VideoDecodeError as err:
            return gr.skip(), None, f"**This file cannot be used:** {reason(err)}. Upload a video file."
        if playable == Path(path).resolve():
            return gr.skip(), None, ""
        return str(playable), {"name": playable.name, "path": path}, ""

    tab.video.change(
        show_playable,
        inputs=[tab.video, tab.preview],
        outputs=[tab.video, tab.preview, tab.panel.status],
        concurrency_limit=None,
        api_visibility="private",
    )

    async def ask_about_upload(video_path, shown, prompt_text, *settings):
        if shown and video_path and Path(video_path).name == shown["name"]:
            video_path = shown["path"]
        async for view in stream_answers(ctx, video_path, prompt_text, _settings_of(*settings)):
            yield view

    tab.ask.click(
        ask_about_upload,
        inputs=[tab.video, tab.preview, tab.prompt, *generation],
        outputs=tab.panel.outputs,
        concurrency_limit=None,
        show_progress="hidden",
        api_visibility="private",
    )


# ---- "Dataset browser" ----


class DatasetBrowser:
    """What the dataset browser shows: split files and predictions under the allowed roots, read once per
    change on disk, and the view of one sample."""

    def __init__(self, ctx: ServerContext):
        self.ctx = ctx
        # Keyed by path and modification time: a file changed on disk is read again.
        self._split = functools.lru_cache(maxsize=8)(lambda path, stamp: open_split(path, ctx.roots))
        self._predictions = functools.lru_cache(maxsize=8)(lambda path, stamp: open_predictions(path, ctx.roots))

    @staticmethod
    def _stamp(path: str) -> int:
        return os.stat(path).st_mtime_ns if os.path.exists(path) else 0

    def samples(self, split: str) -> list[EvalSample]:
        return self._split(split, self._stamp(split))

    def recorded(self, predictions: str) -> dict:
        return self._predictions(predictions, self._stamp(predictions))

    def choices(self, pattern: str) -> list[tuple[str, str]]:
        return [(display_name(p, self.ctx.roots), str(p)) for p in find_files(self.ctx.roots, pattern)]

    def prediction_choices(self) -> list[tuple[str, str]]:
        return [("none", ""), *self.choices(PREDICTIONS_PATTERN)]

    def show(self, split: str | None, predictions: str | None, index) -> tuple:
        """Everything the browser shows for sample `index` of `split` (clamped to the split's range); the
        models' answers about the sample shown before are cleared."""
        ctx = self.ctx
        cleared = ("",) * (2 * len(ctx.models))

        def nothing(message: str) -> tuple:
            return ([["", "", "", ""]], "", None, "", "", "", "", 0, message, *cleared)

        if not split:
            message = (
                "Choose a split file."
                if ctx.roots
                else "Start the server with `--allow-root DIR` to browse datasets under DIR."
            )
            return nothing(message)
        try:
            samples = self.samples(split)
            recorded = self.recorded(predictions) if predictions else {}
        except DatasetError as err:
            return nothing(f"**Cannot show this:** {err}")
        if not samples:
            return nothing("This split file holds no samples.")
        index = min(max(int(index or 0), 0), len(samples) - 1)
        sample = samples[index]
        first = index // PAGE_SIZE * PAGE_SIZE
        rows = []
        for s in samples[first : first + PAGE_SIZE]:
            text = recorded_prediction(s, recorded)
            rows.append([s.index, exercise_of(s), s.video, "—" if text is None else text[:80]])
        pages = (len(samples) + PAGE_SIZE - 1) // PAGE_SIZE
        page_info = f"Page {first // PAGE_SIZE + 1} of {pages} · {len(samples)} samples"
        status = ""
        try:
            video = str(ctx.playable.get(sample_video(sample, ctx.roots)))
        except (DatasetError, VideoDecodeError) as err:
            video, status = None, f"**Cannot play this video:** {err}"
        text = recorded_prediction(sample, recorded)
        if text is None:
            text = (
                "(no prediction recorded for this sample)"
                if predictions
                else "(choose an evaluation's predictions file)"
            )
        header = f"**Sample {index} of {len(samples)}** · `{sample.video}`"
        shown = (rows, page_info, video, header, sample.prompt or "", sample.reference or "", text, index, status)
        return (*shown, *cleared)


@dataclass
class DatasetTab:
    split: gr.Dropdown
    predictions: gr.Dropdown
    rescan: gr.Button
    table: gr.Dataframe
    previous_page: gr.Button
    page_info: gr.Markdown
    next_page: gr.Button
    header: gr.Markdown
    player: gr.Video
    previous_sample: gr.Button
    index: gr.Number
    next_sample: gr.Button
    prompt: gr.Textbox
    reference: gr.Textbox
    recorded: gr.Textbox
    ask: gr.Button
    panel: AnswerPanel

    @property
    def shown(self) -> list:
        """What `DatasetBrowser.show` fills, in its order."""
        return [
            self.table, self.page_info, self.player, self.header, self.prompt, self.reference, self.recorded,
            self.index, *self.panel.outputs,
        ]  # fmt: skip


def _dataset_tab(models, browser: DatasetBrowser) -> DatasetTab:
    with gr.Tab("Dataset browser", id="dataset"):
        splits = browser.choices(SPLIT_PATTERN)
        with gr.Row():
            split = gr.Dropdown(
                choices=splits,
                value=splits[0][1] if splits else None,
                label="Split file",
                elem_id="split-file",
                scale=3,
            )
            predictions = gr.Dropdown(
                choices=browser.prediction_choices(),
                value="",
                label="Predictions (an evaluation's predictions.jsonl)",
                elem_id="predictions-file",
                scale=3,
            )
            rescan = gr.Button("Rescan folders", size="sm", scale=1)
        table = gr.Dataframe(
            headers=["#", "exercise", "video", "recorded prediction"],
            interactive=False,
            wrap=True,
            elem_id="sample-table",
        )
        with gr.Row():
            previous_page = gr.Button("◀ Page", size="sm", elem_id="previous-page")
            page_info = gr.Markdown(elem_id="page-info")
            next_page = gr.Button("Page ▶", size="sm", elem_id="next-page")
        with gr.Row():
            with gr.Column(scale=1):
                header = gr.Markdown(elem_id="sample-header")
                player = gr.Video(interactive=False, label="Video", elem_id="dataset-video", height=320, loop=True)
                with gr.Row():
                    previous_sample = gr.Button("◀ Previous", elem_id="previous-sample")
                    index = gr.Number(value=0, precision=0, label="Sample", minimum=0, elem_id="sample-index")
                    next_sample = gr.Button("Next ▶", elem_id="next-sample")
            with gr.Column(scale=1):
                prompt = gr.Textbox(label="Prompt", interactive=False, elem_id="sample-prompt")
                reference = gr.Textbox(
                    label="Reference feedback", lines=4, interactive=False, elem_id="sample-reference"
                )
                recorded = gr.Textbox(
                    label="Recorded prediction", lines=4, interactive=False, elem_id="sample-prediction"
                )
                ask = gr.Button("Ask the model about this sample", variant="primary", elem_id="ask-sample")
        panel = _answer_panel(models, "dataset")
    return DatasetTab(
        split, predictions, rescan, table, previous_page, page_info, next_page, header, player, previous_sample,
        index, next_sample, prompt, reference, recorded, ask, panel,
    )  # fmt: skip


def _wire_dataset_browsing(page: gr.Blocks, browser: DatasetBrowser, tab: DatasetTab) -> None:
    """Page load, a new split or predictions file, the sample number, the arrows, a table row, rescanning."""
    show = browser.show
    where = [tab.split, tab.predictions, tab.index]
    browse = {"outputs": tab.shown, "concurrency_limit": None, "api_visibility": "private"}
    # Plain functions: Gradio runs them in worker threads, where a transcode for the player may take a while.
    page.load(show, inputs=where, **browse)
    tab.split.change(lambda s, p: show(s, p, 0), inputs=[tab.split, tab.predictions], **browse)
    tab.predictions.change(show, inputs=where, **browse)
    tab.index.submit(show, inputs=where, **browse)
    tab.previous_sample.click(lambda s, p, i: show(s, p, (i or 0) - 1), inputs=where, **browse)
    tab.next_sample.click(lambda s, p, i: show(s, p, (i or 0) + 1), inputs=where, **browse)
    tab.previous_page.click(lambda s, p, i: show(s, p, ((i or 0) // PAGE_SIZE - 1) * PAGE_SIZE), inputs=where, **browse)
    tab.next_page.click(lambda s, p, i: show(s, p, ((i or 0) // PAGE_SIZE + 1) * PAGE_SIZE), inputs=where, **browse)

    def pick_row(s, p, i, event: gr.SelectData):
        return show(s, p, (i or 0) // PAGE_SIZE * PAGE_SIZE + event.index[0])

    tab.table.select(pick_row, inputs=where, **browse)
    tab.rescan.click(
        lambda: (
            gr.Dropdown(choices=browser.choices(SPLIT_PATTERN)),
            gr.Dropdown(choices=browser.prediction_choices()),
        ),
        outputs=[tab.split, tab.predictions],
        api_visibility="private",
    )


def _wire_dataset_questions(
    ctx: ServerContext, browser: DatasetBrowser, tab: DatasetTab, generation: list[gr.Slider]
) -> None:
    """"Ask the model about this sample": the served models answer the sample's own prompt about its video."""

    async def ask_about_sample(s, i, *settings):
        try:
            sample = (browser.samples(s) if s else [])[int(i or 0)]
            path = str(sample_video(sample, ctx.roots))
        except (DatasetError, IndexError) as err:
            yield (
                f"**Cannot ask:** {err if isinstance(err, DatasetError) else 'choose a split file and a sample first'}",
                *[""] * (2 * len(ctx.models)),
            )
            return
        async for view in stream_answers(ctx, path, sample.prompt or "", _settings_of(*settings)):
            yield view

    tab.ask.click(
        ask_about_sample,
        inputs=[tab.split, tab.index, *generation],
        outputs=tab.panel.outputs,
        concurrency_limit=None,
        show_progress="hidden",
        api_visibility="private",
    )
