#!/usr/bin/env bash
# Stage 1 (section 4.2): teacher samples -> SFT set -> full-parameter SFT with verl's sft_trainer.
#   bash recipes/run_sft.sh [NAME [build-sft options...]]
# NAME (default "sft") names the data folder ($DATA_DIR/NAME), the checkpoint folder
# ($CKPT_DIR/NAME) and the experiment; extra options go to build-sft, e.g.
# `bash recipes/run_sft.sh sft_majority --voting majority` (Table 2).
# The teacher samples ($TEACHER_SAMPLES) are drawn once and resumed, shared by every SFT variant.
# The teacher and build-sft fit prompts to one budget (TOKENIZER, MAX_PROMPT_LENGTH) and build-sft
# skips rows longer than SFT_MAX_LENGTH, the data.max_length the trainer is given (common.sh).
# The last line printed is the Hugging Face checkpoint the SFT trainer wrote: the SFT_MODEL of
# run_grpo.sh (which also accepts $CKPT_DIR/NAME itself).
source "$(dirname "$0")/common.sh"
NAME=${1:-sft}
shift || true
TEACHER_SAMPLES=${TEACHER_SAMPLES:-$DATA_DIR/teacher_samples.jsonl}

if [ "$TEACHER_BACKEND" = simulated ]; then
    TEACHER_OPTIONS=(--backend simulated --seed "$SEED")
else
    TEACHER_OPTIONS=(--backend "$TEACHER_BACKEND" --model "$TEACHER" --base-url "$TEACHER_URL")
fi
run mkdir -p "$(dirname "$TEACHER_SAMPLES")"
run confprofile synthesize --records "$SFT_RECORDS" --out "$TEACHER_SAMPLES" "${TEACHER_OPTIONS[@]}" \
    --num-samples "$NUM_SAMPLES" "${DATA_OPTIONS[@]}"
run confprofile build-sft --records "$SFT_RECORDS" --samples "$TEACHER_SAMPLES" --out "$DATA_DIR/$NAME" \
    "${DATA_OPTIONS[@]}" --max-length "$SFT_MAX_LENGTH" "$@"
run torchrun --standalone --nproc_per_node="$NGPUS" -m verl.trainer.sft_trainer \
    --config-path="$CONFIG_DIR" --config-name=confprofile_sft \
    data.train_files="$DATA_DIR/$NAME/sft_train.parquet" \
    data.max_length="$SFT_MAX_LENGTH" \
    model.path="$MODEL" \
    trainer.experiment_name="$NAME" \
    trainer.default_local_dir="$CKPT_DIR/$NAME" \
    trainer.n_gpus_per_node="$NGPUS" \
    "${SFT_SITE[@]}"
echo "SFT checkpoint: $(hf_checkpoint "$CKPT_DIR/$NAME")"
