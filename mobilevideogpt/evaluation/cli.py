"""`python -m mobilevideogpt.evaluation` (wrapped by `bash scripts/eval_qved.sh`): evaluate on a QVED split.

For each model (one, or several side by side: `--model_path A --model_path B` or `--compare B`):
predictions go to `OUTPUT_DIR/<label>/predictions.jsonl` (+ `run_config.json`), resumable; then one report
for all models: `OUTPUT_DIR/report.json` and `OUTPUT_DIR/report.md`, whose table is also printed.
Default OUTPUT_DIR: `results/eval/<split name>/<label>[_vs_<label>...]`.
"""

from __future__ import annotations

import argparse
import gc
import json
import re
import sys
import warnings
from pathlib import Path

from ..constants import DEFAULT_SYSTEM_PROMPT
from ..model.finetuned import ModelLoadError, ModelSource, is_training_output, resolve_model_path
from ..model.loading import one_line
from ..train.checkpoints import COMPLETE_MARKER, is_complete
from .bertscore import DEFAULT_BERTSCORE_MODEL, bertscore_f1
from .metrics import meteor_scorer
from .predictions import (
    PREDICTIONS_FILE,
    RUN_CONFIG_FILE,
    EvalSample,
    EvaluationError,
    check_run_config,
    load_split,
    read_predictions,
    run_predictions,
)
from .report import ModelRun, build_report, completed_pairs, render_markdown, write_report

DEFAULT_SPLIT = "dataset/qved_test.json"
DEFAULT_OUTPUT_ROOT = Path("results/eval")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mobilevideogpt.evaluation",
        description="Run Mobile-VideoGPT on a QVED split (default dataset/qved_test.json) and report exercise "
        "identification accuracy, ROUGE-L, METEOR, BERTScore (when available locally) and throughput. "
        "Resumable: a rerun skips samples already in predictions.jsonl.",
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model_path",
        "--model-path",
        action="append",
        required=True,
        help="model to evaluate (hub id, model folder, training checkpoint or run folder); repeat to compare",
    )
    parser.add_argument("--compare", help="a further model to evaluate side by side (same as another --model_path)")
    parser.add_argument("--labels", nargs="+", help="names for the models in the report (default: from their paths)")
    parser.add_argument("--split", "--data", default=DEFAULT_SPLIT, help=f"split file (default {DEFAULT_SPLIT})")
    parser.add_argument("--output_dir", "--output-dir", type=Path, help="where predictions and reports go")
    parser.add_argument("--model_base", "--model-base", help="base model for training checkpoints (default: recorded)")
    parser.add_argument("--max_new_tokens", "--max-new-tokens", type=int, default=512, help="default 512")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top_p", "--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, help="random seed for sampling (set before every sample)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--dtype", default="auto", help="auto, fp32, bf16, fp16")
    parser.add_argument("--clip_path", "--clip-path", help="CLIP weights when a checkpoint lacks them")
    parser.add_argument("--videomamba_path", "--videomamba-path", help="VideoMamba .pth when a checkpoint lacks it")
    parser.add_argument("--limit", type=int, help="only the first N samples of the split")
    parser.add_argument("--retry_failed", "--retry-failed", action="store_true", help="run failed samples again")
    parser.add_argument("--overwrite", action="store_true", help="discard earlier predictions in the output folder")
    parser.add_argument(
        "--report_only", "--report-only", action="store_true", help="rebuild the report from existing predictions"
    )
    parser.add_argument(
        "--bertscore_model",
        "--bertscore-model",
        default=DEFAULT_BERTSCORE_MODEL,
        help="BERTScore model: a hub id already in the local cache, or a local folder "
        f"(default {DEFAULT_BERTSCORE_MODEL})",
    )
    parser.add_argument(
        "--bertscore_layers", "--bertscore-layers", type=int, help="layer for a model bert-score does not know"
    )
    parser.add_argument("--no_bertscore", "--no-bertscore", action="store_true", help="skip BERTScore")
    parser.add_argument("--no_progress", "--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def model_label(model_path: str) -> str:
    """A folder-safe name: "run/checkpoint-final" → "run-checkpoint-final", "owner/Model" → "Model"."""
    parts = [p for p in Path(model_path).parts if p not in ("/", ".", "..")]
    tail = parts[-2:] if len(parts) >= 2 and parts[-1].startswith("checkpoint") else parts[-1:]
    return re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(tail)) or "model"


def unique_labels(labels: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label}-{seen[label]}")
    return out


def _marker(source: ModelSource) -> str | None:
    if source.checkpoint is None or not is_complete(source.checkpoint):
        return None
    return (source.checkpoint / COMPLETE_MARKER).read_text().strip()


def run_config(source: ModelSource, args: argparse.Namespace) -> dict:
    return {
        "model_path": source.model_path,
        "base": source.base,
        "checkpoint": str(source.checkpoint) if source.checkpoint else None,
        "checkpoint_marker": _marker(source),
        "split": str(Path(args.split).resolve()),
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p if args.temperature > 0 else None,
        "seed": args.seed,
        "system_prompt": DEFAULT_SYSTEM_PROMPT,
        "device": args.device,
        "dtype": args.dtype,
    }


def _free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _base_for(model_path: str, args: argparse.Namespace) -> str | None:
    # --model_base concerns training outputs; in a comparison the other model may be a base model.
    return args.model_base if is_training_output(model_path) else None


def recorded_run_config(model_dir: Path, model_path: str) -> dict:
    if not (model_dir / PREDICTIONS_FILE).is_file():
        raise EvaluationError(f"--report_only: {model_dir / PREDICTIONS_FILE} does not exist; run the evaluation first")
    if (model_dir / RUN_CONFIG_FILE).is_file():
        return json.loads((model_dir / RUN_CONFIG_FILE).read_text())
    return {"model_path": model_path}


def predict(
    model_path: str,
    source: ModelSource,
    label: str,
    samples: list[EvalSample],
    model_dir: Path,
    args: argparse.Namespace,
) -> None:
    """Load one model, run it over the pending samples, free it again."""
    from ..inference import VideoChat

    print(f"[{label}] loading {source.describe()}", file=sys.stderr, flush=True)
    # The checkpoint classified (and recorded in run_config.json) above, not the run folder again: a training
    # run that saves meanwhile must not switch the predictions to another checkpoint.
    chat = VideoChat.from_pretrained(
        source.checkpoint if source.checkpoint is not None else model_path,
        model_base=_base_for(model_path, args),
        device=args.device,
        dtype=args.dtype,
        clip_path=args.clip_path,
        videomamba_path=args.videomamba_path,
    )
    generation = {
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "seed": args.seed,
    }
    ran, skipped = run_predictions(chat, samples, model_dir, generation, args.retry_failed, not args.no_progress, label)
    print(f"[{label}] {ran} sample(s) run, {skipped} already done", file=sys.stderr, flush=True)
    del chat
    _free_memory()


def evaluate(args: argparse.Namespace) -> Path:
    models = args.model_path + ([args.compare] if args.compare else [])
    if args.labels and len(args.labels) != len(models):
        raise EvaluationError(f"--labels names {len(args.labels)} model(s) but {len(models)} are evaluated")
    if args.limit is not None and args.limit < 1:
        raise EvaluationError("--limit must be at least 1")
    all_samples = load_split(args.split)
    samples = all_samples[: args.limit] if args.limit else all_samples
    if not samples:
        raise EvaluationError(f"split file {args.split} holds no records")
    # Classify every model first: a wrong path fails before hours of generation for the others.
    sources = [] if args.report_only else [resolve_model_path(m, _base_for(m, args)) for m in models]
    labels = unique_labels(args.labels or [model_label(m) for m in models])
    output_dir = args.output_dir or DEFAULT_OUTPUT_ROOT / Path(args.split).stem / "_vs_".join(labels)
    meteor = meteor_scorer()
    runs = []
    for i, (model_path, label) in enumerate(zip(models, labels, strict=True)):
        model_dir = output_dir / label
        if args.report_only:
            config = recorded_run_config(model_dir, model_path)
        else:
            config = run_config(sources[i], args)
            check_run_config(model_dir, config, args.overwrite)
            predict(model_path, sources[i], label, samples, model_dir, args)
        run = ModelRun(label, config, read_predictions(model_dir / PREDICTIONS_FILE))
        if not args.no_bertscore:
            pairs = completed_pairs(samples, run)
            run.bertscore = bertscore_f1(
                [record["prediction"] for _, record in pairs],
                [sample.reference for sample, _ in pairs],
                model=args.bertscore_model,
                num_layers=args.bertscore_layers,
            )
        runs.append(run)

    note = f"First {len(samples)} of {len(all_samples)} samples (--limit)." if len(samples) < len(all_samples) else ""
    report = build_report(str(args.split), samples, runs, meteor, note)
    json_path, md_path = write_report(report, output_dir)
    print(render_markdown(report).split("\n## Notes")[0].rstrip())
    print(f"\nReport: {md_path} and {json_path}; predictions under {output_dir}/<label>/{PREDICTIONS_FILE}")
    return output_dir


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.debug:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        evaluate(args)
    except KeyboardInterrupt:
        print("error: interrupted; rerun the same command to continue where it stopped", file=sys.stderr)
        return 1
    except (EvaluationError, ModelLoadError, ValueError) as err:
        if args.debug:
            raise
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 1
    return 0
