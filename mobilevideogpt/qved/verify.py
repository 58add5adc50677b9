"""The QVED pre-flight check behind `bash scripts/verify_qved_setup.sh` (`mvgpt verify`): is everything in place?

Checks what the guide lists (dataset files, the videos in the exercise folders, annotation paths, required
scripts, Python environment, GPU) plus: every video decodes (frames, fps, duration, resolution), the
annotation records parse exactly as training parses them (`processing.parse_record`), package versions, and
where the base checkpoint will come from (never touching the network). Failures: a missing/unreadable video,
an annotation pointing nowhere, invalid JSON, an annotation training would reject, a missing script or
package. Warnings only: no GPU, videos shorter than 16 frames, checkpoint not downloaded, a dataset with other
classes or counts than the guide's 6 × 5.

Results go to `Report.emit` as they come (the command prints them); only the standard library and this
package's light modules are imported at module level so that a broken environment is reported, not crashed on.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import io
import os
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..checkpoints import looks_like_local_path
from ..constants import BASE_MODEL_ID, NUM_FRAMES
from ..data.paths import resolve_annotation_video
from ..errors import first_line
from ..processing import AnnotationError, parse_record
from . import QVED_EXERCISES, SPLIT_FILES
from .convert import QvedInputError, collect_samples, load_json, manifest_classes

MODEL_PATH_ENV_VAR = "MOBILEVIDEOGPT_MODEL_PATH"
GUIDE_VIDEO_COUNT = 30
VIDEO_EXTENSIONS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}
REQUIRED_SCRIPTS = ("scripts/finetune_qved.sh", "scripts/zero3.json", "utils/qved_from_fine_labels.py", "inference.py")
# (import name, distribution name); all must import for training and inference.
REQUIRED_PACKAGES = (
    ("torch", "torch"),
    ("transformers", "transformers"),
    ("peft", "peft"),
    ("deepspeed", "deepspeed"),
    ("accelerate", "accelerate"),
    ("einops", "einops"),
    ("safetensors", "safetensors"),
    ("cv2", "opencv-python-headless"),
    ("PIL", "pillow"),
    ("mobilevideogpt", "mobilevideogpt"),
)
OPTIONAL_PACKAGES = (("decord", "decord", "videos are decoded with OpenCV instead (slower, same frames)"),)
MAX_LISTED = 10  # problems listed per check before "... and N more"
MAX_VIDEO_LINES = 60  # above this many videos, only problem videos get a line of their own

OK, INFO, WARN, FAIL = "OK", "INFO", "WARN", "FAIL"


@dataclass
class Report:
    """Collects check results; `emit(kind, status, text)` receives each one as it comes.

    kind is "section" (a heading), "result" (a line with a status) or "detail" (an indented line under the
    last result).
    """

    emit: Callable[[str, str | None, str], None] = lambda kind, status, text: None
    counts: dict[str, int] = field(default_factory=lambda: {OK: 0, INFO: 0, WARN: 0, FAIL: 0})
    failures: list[str] = field(default_factory=list)

    def section(self, title: str) -> None:
        self.emit("section", None, title)

    def add(self, status: str, message: str, show: bool = True) -> None:
        self.counts[status] += 1
        if status == FAIL:
            self.failures.append(message)
        if show:
            self.emit("result", status, message)

    def add_many(self, status: str, header: str, items: list[str]) -> None:
        """One result line for a group of problems, with the first `MAX_LISTED` listed under it."""
        self.add(status, header)
        for item in items[:MAX_LISTED]:
            self.emit("detail", status, item)
        if len(items) > MAX_LISTED:
            self.emit("detail", status, f"... and {len(items) - MAX_LISTED} more")


def _json_file(report: Report, path: Path, what: str) -> Any | None:
    """Parse a JSON file; report missing/invalid ones. Returns None when unusable."""
    if not path.is_file():
        report.add(FAIL, f"{path.name} missing ({what}): {path}")
        return None
    try:
        return load_json(path, what)
    except QvedInputError as exc:
        report.add(FAIL, str(exc))
        return None


def _videos_on_disk(dataset_dir: Path) -> dict[str, list[Path]]:
    """{class folder: sorted video files} for every sub-folder of the dataset holding videos."""
    folders: dict[str, list[Path]] = {}
    for folder in sorted(p for p in dataset_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        videos = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
        if videos or folder.name in QVED_EXERCISES:
            folders[folder.name] = videos
    return folders


def check_dataset_layout(report: Report, dataset_dir: Path) -> dict[str, list[Path]]:
    """The exercise folders and how many videos each holds."""
    report.section(f"Exercise folders ({dataset_dir})")
    folders = _videos_on_disk(dataset_dir)
    for name in QVED_EXERCISES:
        if name not in folders:
            report.add(WARN, f"{name}/ not found (one of the guide's 6 exercise folders)")
    for name, videos in folders.items():
        extra = "" if name in QVED_EXERCISES else " (not one of the guide's 6 exercises)"
        report.add(OK if videos else WARN, f"{name}/: {len(videos)} videos{extra}")
    total = sum(len(videos) for videos in folders.values())
    if total == 0:
        report.add(
            FAIL,
            f"no video files in any sub-folder of {dataset_dir} (put the QVED videos there, or try the synthetic "
            f"sample: mvgpt sample-data)",
        )
    elif total == GUIDE_VIDEO_COUNT and len(folders) == len(QVED_EXERCISES):
        report.add(OK, f"{total} videos in {len(folders)} exercise folders, as in the guide")
    else:
        report.add(WARN, f"{total} videos in {len(folders)} folders (the guide's sample has {GUIDE_VIDEO_COUNT} in 6)")
    return folders


def check_videos_decode(report: Report, videos: list[Path], dataset_dir: Path) -> None:
    """Decode the 16 sampled frames of every video, as training does."""
    report.section(f"Videos decode ({len(videos)})")
    try:
        from mobilevideogpt.data.video import VideoDecodeError, decode_video
    except Exception as exc:  # a broken torch/numpy/cv2 install surfaces here; reported under Environment too
        report.add(FAIL, f"cannot load the video decoder ({type(exc).__name__}: {exc}); see Environment below")
        return
    show_all = len(videos) <= MAX_VIDEO_LINES
    short = 0
    for path in videos:
        try:
            name = path.relative_to(dataset_dir).as_posix()
        except ValueError:
            name = str(path)
        try:
            decoded = decode_video(path, NUM_FRAMES)
        except VideoDecodeError as exc:
            report.add(FAIL, f"{name}: unreadable ({exc.reason})")
            continue
        duration = f"{decoded.duration_s:.2f} s" if decoded.duration_s is not None else "unknown duration"
        facts = (
            f"{decoded.num_total_frames} frames, {decoded.fps:.2f} fps, {duration}, "
            f"{decoded.width}x{decoded.height} ({decoded.backend})"
        )
        if decoded.num_total_frames < NUM_FRAMES:
            short += 1
            report.add(WARN, f"{name}: {facts}; shorter than {NUM_FRAMES} frames (frames are repeated)", show=show_all)
        else:
            report.add(OK, f"{name}: {facts}", show=show_all)
    if not show_all:
        report.add(
            INFO, f"{len(videos)} videos checked; only problems listed ({short} shorter than {NUM_FRAMES} frames)"
        )


def check_manifest(report: Report, dataset_dir: Path, manifest: Any, manifest_path: Path) -> dict[str, str]:
    classes, problems = manifest_classes(manifest, manifest_path, dataset_dir)
    if problems:
        report.add_many(WARN, f"manifest.json: {len(problems)} entries unusable", problems)
    missing = [f"{relpath} → {dataset_dir / relpath}" for relpath in classes if not (dataset_dir / relpath).is_file()]
    if missing:
        report.add_many(FAIL, f"manifest.json: {len(missing)} of {len(classes)} videos missing", missing)
    else:
        report.add(OK, f"manifest.json: {len(classes)} entries, every video exists")
    return classes


def check_ground_truth(
    report: Report, dataset_dir: Path, ground_truth: Any, path: Path, classes: dict[str, str]
) -> None:
    if not isinstance(ground_truth, list):
        report.add(FAIL, f"{path.name} must be a JSON list of label records, got a JSON {type(ground_truth).__name__}")
        return
    if not ground_truth:
        report.add(FAIL, f"{path.name} holds no label records ([]): put QVED's ground_truth.json there ({path})")
        return
    _, problems = collect_samples(ground_truth, classes, dataset_dir, path)
    if problems:
        report.add_many(
            WARN,
            f"{path.name}: {len(problems)} of {len(ground_truth)} records would be skipped by qved_from_fine_labels.py",
            problems,
        )
    else:
        report.add(OK, f"{path.name}: {len(ground_truth)} records, all usable")


def annotation_problems(annotation: Any, path: Path) -> tuple[list[str], list[str], set[Path]]:
    """(records training would reject, missing videos, existing video files) for one `qved_*.json` file."""
    if not isinstance(annotation, list):
        return [f"must be a JSON list of samples, got a JSON {type(annotation).__name__}"], [], set()
    rejected, missing, found = [], [], set()
    for number, record in enumerate(annotation):
        try:
            conversation = parse_record(record)
        except AnnotationError as err:
            rejected.append(f"sample {number}: {err}")
            continue
        if conversation.video is None:
            continue
        resolved = resolve_annotation_video(conversation.video, path)
        if resolved.is_file():
            found.add(resolved.resolve())
        else:
            missing.append(f"sample {number}: {conversation.video} → {resolved} does not exist")
    return rejected, missing, found


def check_annotations(report: Report, dataset_dir: Path) -> set[Path]:
    """Records and video paths of qved_train.json (required) and qved_val/test.json (when present)."""
    used: set[Path] = set()
    for split, filename in SPLIT_FILES.items():
        path = dataset_dir / filename
        if not path.is_file():
            if split == "train":
                report.add(FAIL, f"{filename} missing: run `python utils/qved_from_fine_labels.py` to create it")
            continue
        annotation = _json_file(report, path, f"{split} annotations")
        if annotation is None:
            continue
        if isinstance(annotation, list) and not annotation:
            report.add(FAIL, f"{filename} has no samples")
            continue
        rejected, missing, found = annotation_problems(annotation, path)
        used |= found
        if rejected:
            report.add_many(FAIL, f"{filename}: {len(rejected)} sample(s) training would reject", rejected)
        if missing:
            report.add_many(FAIL, f"{filename}: {len(missing)} videos not found", missing)
        if not rejected and not missing:
            report.add(OK, f"{filename}: {len(annotation)} samples, all usable for training, every video exists")
    return used


def check_dataset(report: Report, dataset_dir: Path) -> None:
    report.section(f"Dataset files ({dataset_dir})")
    if not dataset_dir.is_dir():
        report.add(
            FAIL,
            f"dataset folder not found: {dataset_dir} (see the guide, or try `mvgpt sample-data`)",
        )
        return
    manifest_path = dataset_dir / "manifest.json"
    ground_truth_path = dataset_dir / "ground_truth.json"
    manifest = _json_file(report, manifest_path, "video → exercise mapping")
    ground_truth = _json_file(report, ground_truth_path, "original labels")
    classes: dict[str, str] | None = None
    if manifest is not None:
        try:
            classes = check_manifest(report, dataset_dir, manifest, manifest_path)
        except QvedInputError as exc:
            report.add(FAIL, str(exc))
    if ground_truth is not None and classes is not None:
        check_ground_truth(report, dataset_dir, ground_truth, ground_truth_path, classes)
    used = check_annotations(report, dataset_dir)

    folders = check_dataset_layout(report, dataset_dir)
    on_disk = {path.resolve() for videos in folders.values() for path in videos}
    referenced = {(dataset_dir / relpath).resolve() for relpath in classes or {}} | used
    videos = sorted((on_disk | {p for p in referenced if p.is_file()}), key=str)
    unused = on_disk - used
    if used and unused:
        report.add(INFO, f"{len(unused)} videos on disk are not used by the qved_*.json annotations")
    check_videos_decode(report, videos, dataset_dir.resolve())


def check_scripts(report: Report, project_root: Path) -> None:
    report.section(f"Required scripts ({project_root})")
    for relpath in REQUIRED_SCRIPTS:
        path = project_root / relpath
        if not path.is_file():
            report.add(FAIL, f"{relpath} missing")
        elif path.suffix == ".json":
            if _json_file(report, path, "DeepSpeed config") is not None:
                report.add(OK, relpath)
        else:
            report.add(OK, relpath)


def _version(module: Any, distribution: str) -> str:
    version = getattr(module, "__version__", None)
    if version:
        return str(version)
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown version"


def _import_quietly(name: str) -> Any:
    """Import a module without its import-time chatter (DeepSpeed logs its accelerator choice)."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return importlib.import_module(name)


def check_environment(report: Report) -> bool:
    """Python, conda env and packages; returns whether torch imported (for the GPU check)."""
    report.section("Environment")
    python = f"Python {platform.python_version()} ({sys.executable})"
    report.add(
        OK if sys.version_info >= (3, 10) else FAIL, python + ("" if sys.version_info >= (3, 10) else ": needs 3.10+")
    )
    conda_env = os.environ.get("CONDA_DEFAULT_ENV")
    if conda_env:
        report.add(OK, f"conda environment: {conda_env}")
    else:
        report.add(INFO, "not in a conda environment (not required; the guide uses `conda activate mobile_videogpt`)")
    torch_ok = False
    for name, distribution in REQUIRED_PACKAGES:
        try:
            module = _import_quietly(name)
        except Exception as exc:  # any import-time failure (e.g. a mismatched torchvision) makes it unusable
            report.add(FAIL, f"{name} ({distribution}) cannot be imported: {first_line(exc)}")
            continue
        where = (
            f" from {Path(module.__file__).parent}"
            if name == "mobilevideogpt" and getattr(module, "__file__", None)
            else ""
        )
        report.add(OK, f"{name} {_version(module, distribution)}{where}")
        torch_ok = torch_ok or name == "torch"
    for name, distribution, consequence in OPTIONAL_PACKAGES:
        try:
            module = _import_quietly(name)
            report.add(OK, f"{name} {_version(module, distribution)}")
        except Exception:
            report.add(WARN, f"{name} not installed (optional): {consequence}")
    return torch_ok


def check_gpu(report: Report, torch_ok: bool) -> None:
    report.section("GPU")
    if not torch_ok:
        report.add(WARN, "cannot check the GPU: torch does not import")
        return
    import torch

    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            properties = torch.cuda.get_device_properties(index)
            report.add(OK, f"cuda:{index} {properties.name}, {properties.total_memory / 2**30:.1f} GiB")
    else:
        report.add(WARN, "no CUDA GPU found: CPU runs are supported, but finetuning is much slower")


def check_checkpoint(report: Report, model_path: str | None) -> None:
    """Where the base checkpoint will come from: a local folder, the Hugging Face cache, or a download."""
    explicit = model_path or os.environ.get(MODEL_PATH_ENV_VAR)
    source = explicit or BASE_MODEL_ID
    report.section(f"Base checkpoint ({source})")
    local = Path(source).expanduser()
    if local.is_dir():
        if (local / "config.json").is_file():
            report.add(OK, f"local folder {local.resolve()}")
        else:
            report.add(FAIL, f"{local} has no config.json: not a model folder")
        return
    if explicit and looks_like_local_path(source):
        report.add(FAIL, f"model path {source} does not exist")
        return
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        report.add(WARN, "huggingface_hub not installed: cannot look in the Hugging Face cache")
        return
    cached = try_to_load_from_cache(source, "config.json")
    if isinstance(cached, str):
        snapshot = Path(cached).parent
        weights = sorted(p.name for p in snapshot.iterdir() if p.suffix in (".safetensors", ".bin"))
        if weights:
            shown = ", ".join(weights[:3]) + (", ..." if len(weights) > 3 else "")
            report.add(OK, f"in the Hugging Face cache: {snapshot} ({shown})")
        else:
            report.add(
                WARN,
                f"only partly in the Hugging Face cache ({snapshot} has no weights); the rest downloads on first use",
            )
        return
    report.add(
        WARN,
        f"{source} is not downloaded yet: it downloads on first use (needs internet), or pre-download it with "
        f"`huggingface-cli download {source}` (or pass --model-path / set {MODEL_PATH_ENV_VAR} to a local copy)",
    )


def run_checks(
    report: Report,
    project_root: Path,
    dataset_dir: Path | None = None,
    model_path: str | None = None,
    skip_environment: bool = False,
) -> Report:
    """Every check, in the order the guide lists them; `report.failures` says whether the setup is usable."""
    check_dataset(report, dataset_dir or project_root / "dataset")
    check_scripts(report, project_root)
    if not skip_environment:
        torch_ok = check_environment(report)
        check_gpu(report, torch_ok)
        check_checkpoint(report, model_path)
    return report
