#!/usr/bin/env bash
# Stage-3 LoRA finetuning of Mobile-VideoGPT-0.5B on QVED under DeepSpeed ZeRO-3.
# Every setting below can be overridden by an environment variable of the same name, e.g.
#   BATCH=2 GACC=8 MAXLEN=1024 bash scripts/finetune_qved.sh
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  cat <<USAGE
Usage: bash scripts/finetune_qved.sh [--demo] [--resume] [--dry-run] [--help] [-- EXTRA_TRAINER_ARGS...]

Finetunes Mobile-VideoGPT-0.5B on QVED with LoRA (LLM) + full projector training, DeepSpeed ZeRO-3.

  --demo     Offline CPU run of the whole pipeline in a few minutes: builds a tiny random checkpoint and
             the synthetic sample dataset under results/demo/, trains a few steps, saves checkpoints.
  --resume   Continue from the latest complete checkpoint-N in OUTPUT_DIR.
  --dry-run  Print the configuration and the launch command, then exit.
  --help     This text.
  -- ARGS    Passed to the trainer as is (any transformers TrainingArguments flag, e.g. -- --max_steps 20).

Environment variables (default):
  MODEL        base checkpoint, hub id or directory   (Amshaker/Mobile-VideoGPT-0.5B)
  DATASET      training set: registry name or .json   (QVED_TRAIN)
  DATASET_VAL  evaluation set, empty for none         (QVED_VAL if dataset/qved_val.json exists)
  EPOCHS       number of epochs                       (10)
  LR           learning rate (LoRA)                   (1e-4)
  MM_PROJ_LR   projector learning rate                (2e-5)
  LORA_R       LoRA rank                              (64)
  LORA_ALPHA   LoRA alpha                             (128)
  BATCH        per-device batch size                  (4)
  GACC         gradient accumulation steps            (4)
  MAXLEN       max text tokens per sample             (2048; visual tokens come on top)
  SAVE_STEPS   checkpoint every N optimizer steps     (50)
  OUTPUT_DIR   where checkpoints go                   (results/qved_finetune_mobilevideogpt_0.5B)
  DS_CONFIG    DeepSpeed config                       (scripts/zero3.json)
  NUM_GPUS     ranks on this node                     (all visible GPUs; 1 process on CPU)
  HOSTFILE     DeepSpeed hostfile for several nodes   (none)
  MASTER_PORT  rendezvous port                        (29500)
  PRECISION    bf16 | fp16 | fp32                     (bf16 on GPUs that support it, fp16 on others, fp32 on CPU)
  REPORT_TO    tensorboard | wandb | none             (tensorboard)
  PYTHON       python interpreter                     (python)
USAGE
}

DEMO=0
RESUME=0
DRY_RUN=0
EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --demo) DEMO=1 ;;
    --resume) RESUME=1 ;;
    --dry-run) DRY_RUN=1 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "error: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done

PYTHON=${PYTHON:-python}
if ! "$PYTHON" -c "import torch, deepspeed, mobilevideogpt" 2>/dev/null; then
  echo "error: '$PYTHON' cannot import torch, deepspeed and mobilevideogpt: activate the environment" \
       "(conda activate mobile_videogpt) or install the project (pip install -e .), or set PYTHON=..." >&2
  exit 1
fi
if [[ $DEMO == 1 ]]; then
  DEMO_DIR=${DEMO_DIR:-results/demo}
  MODEL=${MODEL:-$DEMO_DIR/tiny-mobilevideogpt}
  [[ -f $MODEL/config.json ]] || "$PYTHON" utils/make_tiny_checkpoint.py --out "$MODEL"
  if [[ ! -f $DEMO_DIR/dataset/qved_train.json ]]; then
    "$PYTHON" utils/make_sample_dataset.py --out "$DEMO_DIR/dataset"
    "$PYTHON" utils/qved_from_fine_labels.py --dataset-dir "$DEMO_DIR/dataset" --val-ratio 0.2
  fi
  DATASET=${DATASET:-$DEMO_DIR/dataset/qved_train.json}
  DATASET_VAL=${DATASET_VAL-$DEMO_DIR/dataset/qved_val.json}
  EPOCHS=${EPOCHS:-1}
  LR=${LR:-1e-3}
  MM_PROJ_LR=${MM_PROJ_LR:-1e-3}
  LORA_R=${LORA_R:-8}
  LORA_ALPHA=${LORA_ALPHA:-16}
  BATCH=${BATCH:-2}
  GACC=${GACC:-1}
  MAXLEN=${MAXLEN:-256}
  SAVE_STEPS=${SAVE_STEPS:-5}
  OUTPUT_DIR=${OUTPUT_DIR:-$DEMO_DIR/qved_finetune_tiny}
fi

MODEL=${MODEL:-Amshaker/Mobile-VideoGPT-0.5B}
DATASET=${DATASET:-QVED_TRAIN}
if [[ -z ${DATASET_VAL+x} ]]; then
  DATASET_VAL=$([[ -f dataset/qved_val.json ]] && echo QVED_VAL || echo "")
fi
EPOCHS=${EPOCHS:-10}
LR=${LR:-1e-4}
MM_PROJ_LR=${MM_PROJ_LR:-2e-5}
LORA_R=${LORA_R:-64}
LORA_ALPHA=${LORA_ALPHA:-128}
BATCH=${BATCH:-4}
GACC=${GACC:-4}
MAXLEN=${MAXLEN:-2048}
SAVE_STEPS=${SAVE_STEPS:-50}
OUTPUT_DIR=${OUTPUT_DIR:-results/qved_finetune_mobilevideogpt_0.5B}
DS_CONFIG=${DS_CONFIG:-scripts/zero3.json}
MASTER_PORT=${MASTER_PORT:-29500}
REPORT_TO=${REPORT_TO:-tensorboard}

GPUS_VISIBLE=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())")
if [[ $GPUS_VISIBLE -gt 0 ]]; then
  NUM_GPUS=${NUM_GPUS:-$GPUS_VISIBLE}
  DEFAULT_PRECISION=$("$PYTHON" -c "import torch; print('bf16' if torch.cuda.is_bf16_supported() else 'fp16')")
  DEVICE_ARGS=()
else
  NUM_GPUS=${NUM_GPUS:-1}
  DEFAULT_PRECISION=fp32
  DEVICE_ARGS=(--use_cpu True)
fi
PRECISION=${PRECISION:-$DEFAULT_PRECISION}
case "$PRECISION" in
  bf16) PRECISION_ARGS=(--bf16 True) ;;
  fp16) PRECISION_ARGS=(--fp16 True) ;;
  fp32) PRECISION_ARGS=() ;;
  *) echo "error: PRECISION must be bf16, fp16 or fp32 (got '$PRECISION')" >&2; exit 2 ;;
esac

if [[ -n ${HOSTFILE:-} ]]; then
  LAUNCH=("$PYTHON" -m deepspeed.launcher.runner --hostfile "$HOSTFILE" --master_port "$MASTER_PORT")
  WHERE="nodes from $HOSTFILE"
else
  LAUNCH=("$PYTHON" -m deepspeed.launcher.runner --num_gpus "$NUM_GPUS" --master_port "$MASTER_PORT")
  WHERE="$NUM_GPUS rank(s) on $([[ $GPUS_VISIBLE -gt 0 ]] && echo GPU || echo CPU)"
fi

EVAL_ARGS=(--eval_strategy no)
if [[ -n $DATASET_VAL ]]; then
  # Evaluation computes full logits (length × vocab per sample): one sample per step keeps that small.
  EVAL_ARGS=(--dataset_val "$DATASET_VAL" --eval_strategy steps --eval_steps "$SAVE_STEPS" --per_device_eval_batch_size 1 --prediction_loss_only True)
fi
RESUME_ARGS=()
[[ $RESUME == 1 ]] && RESUME_ARGS=(--resume True)

cat <<CONFIG
== QVED finetuning: Mobile-VideoGPT ==
  base model        $MODEL
  train / val data  $DATASET / ${DATASET_VAL:-none}
  epochs            $EPOCHS
  learning rate     $LR (projectors $MM_PROJ_LR)
  LoRA r / alpha    $LORA_R / $LORA_ALPHA
  batch x accum     $BATCH x $GACC per rank
  max text length   $MAXLEN
  save every        $SAVE_STEPS steps -> $OUTPUT_DIR
  DeepSpeed         $DS_CONFIG, $WHERE, $PRECISION
CONFIG

CMD=("${LAUNCH[@]}" mobilevideogpt/train/train.py \
  --deepspeed "$DS_CONFIG" \
  --model_name_or_path "$MODEL" \
  --dataset_use "$DATASET" \
  --output_dir "$OUTPUT_DIR" \
  --num_train_epochs "$EPOCHS" \
  --learning_rate "$LR" \
  --mm_projector_lr "$MM_PROJ_LR" \
  --lora_enable True --lora_r "$LORA_R" --lora_alpha "$LORA_ALPHA" --lora_dropout 0.05 \
  --per_device_train_batch_size "$BATCH" \
  --gradient_accumulation_steps "$GACC" \
  --model_max_length "$MAXLEN" \
  --save_strategy steps --save_steps "$SAVE_STEPS" \
  --logging_steps 1 \
  --weight_decay 0.0 --warmup_steps 0.03 --lr_scheduler_type cosine \
  --gradient_checkpointing True \
  --dataloader_num_workers 2 \
  --report_to "$REPORT_TO" \
  "${EVAL_ARGS[@]}" "${RESUME_ARGS[@]}" "${DEVICE_ARGS[@]}" "${PRECISION_ARGS[@]}" "${EXTRA[@]}")

if [[ $DRY_RUN == 1 ]]; then
  printf '%q ' "${CMD[@]}"; echo
  exit 0
fi
mkdir -p "$OUTPUT_DIR"
exec "${CMD[@]}"
