"""`mvgpt eval`: evaluate one or more models on a QVED split.

For each model (one, or several side by side: `--model_path A --model_path B` or `--compare B`):
predictions go to `OUTPUT_DIR/<label>/predictions.jsonl` (+ `run_config.json`), resumable; then one report
for all models: `OUTPUT_DIR/report.json` and `OUTPUT_DIR/report.md`, whose table is also printed.
Default OUTPUT_DIR: `results/eval/<split name>/<label>[_vs_<label>...]`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import add_model_options, quiet_libraries, visual_tokens_request
from .eval_live import add_live_options

HELP = "evaluate models on a split: predictions (resumable) and a metrics report"
# Without --model_path: the run `mvgpt train` writes by default (its checkpoint-final).
DESCRIPTION = (
    "Run Mobile-VideoGPT on a QVED split (default dataset/qved_test.json) and report exercise identification "
    "accuracy (with a confusion matrix), ROUGE-L, METEOR (with WordNet synonyms), MiniLM sentence similarity, "
    "BERTScore (when available locally), per-exercise means and throughput, as JSON, Markdown and a self-contained "
    "HTML page. Resumable: a rerun skips samples already in predictions.jsonl."
)
PARSER_KWARGS = {"epilog": __doc__, "formatter_class": argparse.RawDescriptionHelpFormatter}
DEFAULT_SPLIT = "dataset/qved_test.json"


def configure(parser: argparse.ArgumentParser) -> None:
    from ..evaluation.bertscore import DEFAULT_BERTSCORE_MODEL

    add_model_options(parser, required=False, repeat=True)
    parser.add_argument("--compare", help="a further model to evaluate side by side (same as another --model_path)")
    parser.add_argument("--labels", nargs="+", help="names for the models in the report (default: from their paths)")
    parser.add_argument("--split", "--data", default=DEFAULT_SPLIT, help=f"split file (default {DEFAULT_SPLIT})")
    parser.add_argument("--output_dir", type=Path, help="where predictions and reports go")
    parser.add_argument("--max_new_tokens", type=int, default=512, help="default 512")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top_p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, help="random seed for sampling (set before every sample)")
    parser.add_argument("--limit", type=int, help="only the first N samples of the split")
    parser.add_argument("--retry_failed", action="store_true", help="run failed samples again")
    parser.add_argument("--overwrite", action="store_true", help="discard earlier predictions in the output folder")
    parser.add_argument("--report_only", action="store_true", help="rebuild the report from existing predictions")
    parser.add_argument(
        "--bertscore_model",
        default=DEFAULT_BERTSCORE_MODEL,
        help="BERTScore model: a hub id already in the local cache, or a local folder "
        f"(default {DEFAULT_BERTSCORE_MODEL})",
    )
    parser.add_argument("--bertscore_layers", type=int, help="layer for a model bert-score does not know")
    parser.add_argument("--no_bertscore", action="store_true", help="skip BERTScore")
    parser.add_argument("--no_similarity", action="store_true", help="skip the MiniLM sentence similarity")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument(
        "--live",
        action="store_true",
        help="score live coaching instead: timestamped feedback (`mvgpt live` events) against timestamped "
        "references, with QEVD's T-F-Score and METEOR / ROUGE-L on matched pairs",
    )
    add_live_options(parser.add_argument_group("--live"))


def run(args: argparse.Namespace) -> int:
    if not args.debug:
        quiet_libraries()
    if args.live:
        from . import eval_live

        return eval_live.run(args)
    from ..evaluation.predictions import PREDICTIONS_FILE
    from ..evaluation.report import render_markdown
    from ..evaluation.runner import EvaluationSettings, evaluate
    from ..qved.recipe import DEFAULT_OUTPUT_DIR

    settings = EvaluationSettings(
        models=(args.model_path or [DEFAULT_OUTPUT_DIR]) + ([args.compare] if args.compare else []),
        split=args.split,
        labels=args.labels,
        output_dir=args.output_dir,
        model_base=args.model_base,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        device=args.device,
        dtype=args.dtype,
        quantize=args.quantize,
        clip_path=args.clip_path,
        videomamba_path=args.videomamba_path,
        visual_tokens=visual_tokens_request(args),
        limit=args.limit,
        retry_failed=args.retry_failed,
        overwrite=args.overwrite,
        report_only=args.report_only,
        bertscore_model=args.bertscore_model,
        bertscore_layers=args.bertscore_layers,
        bertscore=not args.no_bertscore,
        similarity=not args.no_similarity,
        progress=not args.no_progress,
    )
    try:
        output_dir, report = evaluate(settings, log=lambda message: print(message, file=sys.stderr, flush=True))
    except KeyboardInterrupt:
        print("error: interrupted; rerun the same command to continue where it stopped", file=sys.stderr)
        return 1
    print(render_markdown(report).split("\n## Notes")[0].rstrip())
    print(
        f"\nReport: {output_dir / 'report.html'} (plots, per-sample frames), {output_dir / 'report.md'} and "
        f"{output_dir / 'report.json'}; "
        f"predictions under {output_dir}/<label>/{PREDICTIONS_FILE}"
    )
    return 0
