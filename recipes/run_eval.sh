#!/usr/bin/env bash
# Evaluation (section 5.1, Table 7): the model samples the labelled users, `confprofile eval` scores it.
#   bash recipes/run_eval.sh NAME MODEL [eval options...]
# MODEL is a Hugging Face model, or a trainer's checkpoint folder ($CKPT_DIR/NAME of run_sft.sh or
# run_grpo.sh: its latest Hugging Face checkpoint is used). The model samples EVAL_RECORDS (users
# with gold labels) EVAL_NUM_SAMPLES times each (default 1: the model's own answer and score) with
# the student backend, seeded and cut like the student pass, into $DATA_DIR/eval_samples/;
# `confprofile eval` writes Table 7, Figure 5 and report.json to $EVAL_DIR/NAME (default
# out/eval/NAME). Extra options go to `confprofile eval` (e.g. --recall standard).
source "$(dirname "$0")/common.sh"
NAME=${1:?usage: run_eval.sh NAME MODEL [eval options]}
EVAL_MODEL=$(hf_checkpoint "${2:?usage: run_eval.sh NAME MODEL [eval options]}")
shift 2
EVAL_NUM_SAMPLES=${EVAL_NUM_SAMPLES:-1}
EVAL_DIR=${EVAL_DIR:-out/eval}
EVAL_SAMPLES=${EVAL_SAMPLES:-$DATA_DIR/eval_samples/$(slug "$EVAL_MODEL")_seed$SEED.jsonl}

student_pass "$EVAL_SAMPLES" "$EVAL_RECORDS" "$EVAL_MODEL" "$EVAL_NUM_SAMPLES"
run confprofile eval --records "$EVAL_RECORDS" --samples "$EVAL_SAMPLES" --name "$NAME" --out "$EVAL_DIR/$NAME" \
    --taxonomy "$TAXONOMY" "$@"
