"""`mvgpt serve`'s page in a real browser: headless Chromium (Debian's build) driven by Playwright.

One server serves the module: a finetuned run compared with its base, two allowed directories (the sample
dataset's project folder and one holding an evaluation's predictions). Each test saves a screenshot of the
page under its tmp folder. Random tiny models write junk, so the tests check that text streams in and lands
in the right places, never what it says.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
import pytest

from tests.serve_server import start_server, write_video

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Chromium's built-in test camera (a moving pattern) and no permission prompt, for the webcam test.
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
]
SETUP_HINT = "run the project's setup (as root: `apt-get install -y chromium`; then `pip install -e '.[dev]'`)"
TIMEOUT_MS = 60_000
PREDICTED = "PREDICTED FEEDBACK FOR SAMPLE ZERO"


@pytest.fixture(scope="module")
def split_file(sample_dataset_dir) -> Path:
    return sample_dataset_dir / "qved_train.json"


@pytest.fixture(scope="module")
def evaluation_dir(tmp_path_factory, split_file) -> Path:
    """An evaluation's output folder with a predictions.jsonl that has a record for sample 0."""
    root = tmp_path_factory.mktemp("evaluation")
    first = json.loads(split_file.read_text())[0]
    record = {
        "id": f"0:{first['video']}",
        "index": 0,
        "video": first["video"],
        "prompt": first["conversations"][0]["value"],
        "reference": first["conversations"][1]["value"],
        "status": "ok",
        "prediction": PREDICTED,
    }
    folder = root / "results" / "eval" / "qved_train" / "finetuned"
    folder.mkdir(parents=True)
    (folder / "predictions.jsonl").write_text(json.dumps(record) + "\n")
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory, mvgpt_trained_run, mvgpt_fast_checkpoint, sample_dataset_dir, evaluation_dir):
    server = start_server(
        tmp_path_factory.mktemp("serve_browser"),
        "--model_path", str(mvgpt_trained_run),
        "--compare", str(mvgpt_fast_checkpoint),
        "--allow-root", str(sample_dataset_dir.parent),
        "--allow-root", str(evaluation_dir),
    )  # fmt: skip
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not CHROMIUM.is_file():
        pytest.fail(f"Chromium is missing ({CHROMIUM}): {SETUP_HINT}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(f"the playwright package is missing: {SETUP_HINT}")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 1000},
            permissions=["camera", "microphone"],
        )
        context.set_default_timeout(TIMEOUT_MS)
        yield context
        context.close()


@pytest.fixture
def page(browser, server):
    page = browser.new_page()
    page.goto(f"{server.url}/")
    page.wait_for_selector("#ask-button")
    yield page
    page.close()


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("clips") / "my squats.mp4", frames=32)


def shoot(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    return path


def set_slider(page, elem_id: str, value: float) -> None:
    """Type `value` into a slider's box until the slider's state holds it.

    The page sends the state, not the box's text, and a value typed while the page is still setting the slider up
    is lost (CI once asked at temperature 0 and got greedy whitespace; a later run waited a minute for a value that
    never came), so it is typed again."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    box = page.locator(f"#{elem_id} input[type=number]")
    for _ in range(10):
        box.fill(str(value))
        box.press("Enter")
        try:
            page.wait_for_function(
                "([id, value]) => Number(document.querySelector(`#${id} input[type=range]`).value) === value",
                arg=[elem_id, value],
                timeout=3000,
            )
            return
        except PlaywrightTimeout:
            continue
    raise AssertionError(f"the {elem_id} slider never took the value {value}")


def sampled_generation(page, max_new_tokens: int) -> None:
    """Sampling makes a random model's text visible (greedy decoding repeats a newline)."""
    page.get_by_text("Generation settings").click()
    set_slider(page, "temperature", 1)
    set_slider(page, "max-new-tokens", max_new_tokens)


def text_of(page, selector: str) -> str:
    return page.locator(selector).input_value()


def upload(page, path: Path) -> None:
    """Upload a video; the player then shows a copy browsers can play (OpenCV writes MPEG-4 Part 2)."""
    page.locator("#ask-video input[type=file]").set_input_files(str(path))
    page.wait_for_function(
        "() => { const v = document.querySelector('#ask-video video'); return v && v.currentSrc.endsWith('.webm'); }"
    )


def record_values(page, selector: str) -> None:
    """Record every value the page writes into the textarea under `selector`, from now on.

    Wraps the textarea's value setter, so a fast CPU that streams a whole answer between two polls of the test
    still leaves every step on record (CI once saw only the final text when polling every 20 ms)."""
    page.evaluate(
        """(selector) => {
            const proto = HTMLTextAreaElement.prototype;
            const native = Object.getOwnPropertyDescriptor(proto, 'value');
            window.__recorded = [];
            Object.defineProperty(proto, 'value', {
                configurable: true,
                get() { return native.get.call(this); },
                set(value) {
                    if (this.closest(selector)) window.__recorded.push(String(value));
                    native.set.call(this, value);
                },
            });
        }""",
        selector,
    )


def recorded_values(page) -> list[str]:
    """The distinct values `record_values` saw, in order."""
    values: list[str] = []
    for value in page.evaluate("() => window.__recorded"):
        if not values or values[-1] != value:
            values.append(value)
    return values


def test_upload_pick_exercise_and_watch_both_answers_stream(page, clip, tmp_path):
    sampled_generation(page, 96)
    page.locator("#ask-exercise input").click()
    page.get_by_role("option", name="squats", exact=True).click()
    page.wait_for_function(
        "() => document.querySelector('#ask-prompt textarea').value === "
        "'Analyze this squats video and provide corrective feedback.'"
    )
    upload(page, clip)
    record_values(page, "#ask-answer-0")
    page.locator("#ask-button").click()
    page.wait_for_function("() => document.querySelector('#ask-status').innerText.includes('Done')")
    seen = recorded_values(page)
    final = text_of(page, "#ask-answer-0 textarea")
    partial = [v for v in seen if v and v != final]
    assert final.strip(), "no answer appeared"
    assert partial, f"the answer appeared at once, not streamed: {seen}"
    assert text_of(page, "#ask-answer-1 textarea").strip(), "the compared model's answer is missing"
    for index in (0, 1):
        timings = page.locator(f"#ask-timings-{index}").inner_text()
        for part in ("decode", "encoders", "first token", "tokens/s"):
            assert part in timings, timings
    assert "Compared with" in page.locator("#ask-answer-1").inner_text()
    shoot(page, tmp_path, "ask_answered")


def test_the_page_shows_the_queue_position(page, server, clip, tmp_path, mvgpt_trained_run):
    sampled_generation(page, 8)
    upload(page, clip)
    video = "data:video/mp4;base64," + base64.b64encode(clip.read_bytes()).decode()
    body = {
        "model": str(mvgpt_trained_run),
        "stream": True,
        "max_tokens": 3000,
        "min_tokens": 3000,
        "temperature": 1.0,
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "hold"}, {"type": "video_url", "video_url": {"url": video}}],
            }
        ],
    }
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=120) as busy:
        lines = busy.iter_lines()
        assert any('"content": "' in line and '"role"' not in line for line in lines)
        page.locator("#ask-button").click()
        page.wait_for_function("() => document.querySelector('#ask-status').innerText.includes('position 2')")
        assert "1 request ahead" in page.locator("#ask-status").inner_text()
        shoot(page, tmp_path, "ask_queued")
    # The busy client left; the page's request is served at once.
    page.wait_for_function("() => document.querySelector('#ask-status').innerText.includes('Done')", timeout=30_000)
    assert text_of(page, "#ask-answer-0 textarea").strip()


def test_a_file_that_is_not_a_video_gets_a_clear_message(page, tmp_path):
    fake = tmp_path / "not a video.mp4"
    fake.write_text("these are not the frames you are looking for\n" * 100)
    page.locator("#ask-video input[type=file]").set_input_files(str(fake))
    # Checked as soon as it arrives, and again when asked about.
    page.wait_for_function("() => document.querySelector('#ask-status').innerText.includes('cannot be used')")
    page.locator("#ask-button").click()
    page.wait_for_timeout(1000)
    status = page.locator("#ask-status").inner_text()
    assert "This file cannot be used: neither decord nor OpenCV can open it" in status, status
    assert "Upload a video file" in status and "Traceback" not in status and "Done" not in status
    assert text_of(page, "#ask-answer-0 textarea") == ""
    shoot(page, tmp_path, "ask_not_a_video")
    # Nothing is stuck: a real video is answered next.
    page.reload()
    page.wait_for_selector("#ask-button")
    sampled_generation(page, 4)
    upload(page, write_video(tmp_path / "real.mp4"))
    page.locator("#ask-button").click()
    page.wait_for_function("() => document.querySelector('#ask-status').innerText.includes('Done')")


def test_record_from_the_webcam_and_ask(page, tmp_path):
    sampled_generation(page, 8)
    page.get_by_label("Capture from camera").click()
    page.get_by_text("Click to Access Webcam").click()
    page.wait_for_function(  # the live picture runs before recording starts
        "() => { const v = document.querySelector('#ask-video video'); return v && v.srcObject && v.readyState >= 2; }"
    )
    page.locator("#ask-video button", has_text="Record").click()
    page.wait_for_timeout(5000)  # the test camera runs slowly on a loaded machine: record enough frames
    page.locator("#ask-video button", has_text="Stop").click()
    page.wait_for_function(
        "() => { const v = document.querySelector('#ask-video video'); return v && v.currentSrc.includes('/gradio_api/file='); }"
    )
    page.locator("#ask-button").click()
    try:
        page.wait_for_function("() => document.querySelector('#ask-status').innerText.includes('Done')")
    finally:
        shoot(page, tmp_path, "ask_webcam")
    assert text_of(page, "#ask-answer-0 textarea").strip()
    assert "first token" in page.locator("#ask-timings-0").inner_text()


def playback(page) -> dict:
    """Play the dataset player muted (autoplay rules) and report how far it got."""
    return page.evaluate(
        """async () => {
            const video = document.querySelector('#dataset-video video');
            video.muted = true;
            await video.play();
            await new Promise(resolve => setTimeout(resolve, 1500));
            return {readyState: video.readyState, currentTime: video.currentTime, src: video.currentSrc,
                    error: video.error && video.error.message};
        }"""
    )


def test_dataset_browser_plays_videos_beside_reference_and_prediction(page, split_file, tmp_path):
    records = json.loads(split_file.read_text())
    sampled_generation(page, 12)
    page.get_by_role("tab", name="Dataset browser").click()
    page.wait_for_selector("#dataset-video video")
    assert f"Sample 0 of {len(records)}" in page.locator("#sample-header").inner_text()
    assert text_of(page, "#sample-reference textarea") == records[0]["conversations"][1]["value"]
    assert text_of(page, "#sample-prompt textarea") == records[0]["conversations"][0]["value"]
    assert page.locator("#sample-table [role=grid]").get_attribute("aria-rowcount") == "11"  # header + a page of 10
    assert "Page 1 of 3" in page.locator("#page-info").inner_text()

    played = playback(page)
    assert played["error"] is None and played["readyState"] >= 2 and played["currentTime"] > 0, played

    page.locator("#predictions-file input").click()
    page.get_by_role("option", name="predictions.jsonl").click()
    page.wait_for_function(
        f"() => document.querySelector('#sample-prediction textarea').value === {json.dumps(PREDICTED)}"
    )
    page.locator("#ask-sample").click()
    page.wait_for_function("() => document.querySelector('#dataset-status').innerText.includes('Done')")
    assert text_of(page, "#dataset-answer-0 textarea").strip() and text_of(page, "#dataset-answer-1 textarea").strip()
    shoot(page, tmp_path, "dataset_sample_0")

    first_src = played["src"]
    page.locator("#next-sample").click()
    page.wait_for_function("() => document.querySelector('#sample-header').innerText.includes('Sample 1 of')")
    assert text_of(page, "#sample-reference textarea") == records[1]["conversations"][1]["value"]
    assert "no prediction recorded" in text_of(page, "#sample-prediction textarea")
    assert text_of(page, "#dataset-answer-0 textarea") == "", "the answer about the previous sample is still shown"
    page.wait_for_function(
        f"() => document.querySelector('#dataset-video video').currentSrc !== {json.dumps(first_src)}"
    )
    played = playback(page)
    assert played["error"] is None and played["readyState"] >= 2 and played["currentTime"] > 0, played

    page.locator("#next-page").click()
    page.wait_for_function("() => document.querySelector('#page-info').innerText.includes('Page 2 of 3')")
    assert "Sample 10 of" in page.locator("#sample-header").inner_text()
    shoot(page, tmp_path, "dataset_page_2")
