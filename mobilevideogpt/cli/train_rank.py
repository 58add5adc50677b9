"""What each training rank runs: `python -m mobilevideogpt.cli.train_rank [TrainingArguments flags]`.

`mvgpt train` starts one per GPU (or one on the CPU) through DeepSpeed's launcher; running it by hand trains in
one process (`--help` lists every flag: the project's and transformers' TrainingArguments).
"""

from __future__ import annotations

import logging
import warnings


def main(argv: list[str] | None = None) -> None:
    import transformers
    from transformers import HfArgumentParser

    from ..train.arguments import DataArguments, ModelArguments, TrainingArguments
    from ..train.finetune import run

    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(argv)
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        level=logging.INFO if training_args.should_log else logging.WARNING,
    )
    transformers.utils.logging.set_verbosity_warning()
    # DeepSpeed 0.19 still calls collectives that torch 2.13 deprecates; one warning per call floods the log.
    warnings.filterwarnings("ignore", message=r".*torch\.distributed\.\w+` is deprecated", category=FutureWarning)
    run(model_args, data_args, training_args)


if __name__ == "__main__":
    main()
