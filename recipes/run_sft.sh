#!/usr/bin/env bash
# Stage 1 (section 4.2): teacher samples -> SFT set -> full-parameter SFT with verl's sft_trainer.
#   bash recipes/run_sft.sh [NAME [build-sft options...]]
# NAME (default "sft") names the data folder and the experiment; extra options go to build-sft,
# e.g. `bash recipes/run_sft.sh sft_majority --voting majority` (Table 2).
# The teacher and build-sft fit prompts to one budget (TOKENIZER, MAX_PROMPT_LENGTH) and build-sft
# skips rows longer than SFT_MAX_LENGTH, the data.max_length the trainer is given (common.sh).
source "$(dirname "$0")/common.sh"
NAME=${1:-sft}
shift || true
TEACHER_SAMPLES=${TEACHER_SAMPLES:-$DATA_DIR/teacher_samples.jsonl}

run confprofile synthesize --records "$SFT_RECORDS" --out "$TEACHER_SAMPLES" \
    --backend openai --model "$TEACHER" --base-url "$TEACHER_URL" --num-samples "$NUM_SAMPLES" "${BUDGET[@]}"
run confprofile build-sft --records "$SFT_RECORDS" --samples "$TEACHER_SAMPLES" --out "$DATA_DIR/$NAME" \
    "${BUDGET[@]}" --max-length "$SFT_MAX_LENGTH" "$@"
run torchrun --standalone --nproc_per_node="$NGPUS" -m verl.trainer.sft_trainer \
    --config-path="$CONFIG_DIR" --config-name=confprofile_sft \
    data.train_files="$DATA_DIR/$NAME/sft_train.parquet" \
    data.max_length="$SFT_MAX_LENGTH" \
    model.path="$MODEL" \
    trainer.experiment_name="$NAME" \
    trainer.default_local_dir="$CKPT_DIR/$NAME" \
    trainer.n_gpus_per_node="$NGPUS"
