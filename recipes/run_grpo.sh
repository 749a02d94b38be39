#!/usr/bin/env bash
# Stage 2 (section 4.3): student reference pass -> RL set with difficulty filtering -> GRPO.
#   bash recipes/run_grpo.sh NAME SFT_MODEL [build-rl options...] [-- main_ppo overrides...]
# SFT_MODEL is the SFT stage's Hugging Face checkpoint, or its checkpoint folder ($CKPT_DIR/sft):
# the latest global_step_N/huggingface in it is used. The student samples the RL pool once per
# SFT model and SEED (STUDENT_BACKEND: vllm, or transformers without vLLM) into
# $DATA_DIR/student_samples/, outside every run's folder; every RL ablation of that model reuses
# that pass (a re-run draws nothing), so Table 3's shapes are filtered from the same samples.
# build-rl turns them into frozen reference confidences and difficulty (default shape: m) and
# holds out VAL_FRACTION of the users (default 0.05) as rl_val.parquet; verl's main_ppo then runs
# GRPO with the confprofile reward, validating before training and every 5 steps, and saves the
# policy as a Hugging Face model under $CKPT_DIR/NAME (the last line printed: run_eval.sh's MODEL).
# Every data step and the reward get TAXONOMY; the student pass and build-rl fit prompts to the
# budget main_ppo is given as data.max_prompt_length (a data.max_prompt_length override, here or
# in GRPO_OVERRIDES, sets it too; data.max_response_length likewise cuts the student pass).
# e.g. `bash recipes/run_grpo.sh grpo_uniform checkpoints/confprofile/sft --shape uniform`  (Table 3)
#      `bash recipes/run_grpo.sh grpo_self checkpoints/confprofile/sft -- confprofile.weighting=self` (Table 5)
source "$(dirname "$0")/common.sh"
NAME=${1:?usage: run_grpo.sh NAME SFT_MODEL [build-rl options] [-- overrides]}
SFT_MODEL=$(hf_checkpoint "${2:?usage: run_grpo.sh NAME SFT_MODEL [build-rl options] [-- overrides]}")
shift 2
CALIBRATION=${CALIBRATION:-$DATA_DIR/sft/calibration.json}
VAL_FRACTION=${VAL_FRACTION:-0.05}
PREP=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do PREP+=("$1"); shift; done
[ $# -gt 0 ] && shift
# A token limit given to the trainer is the limit of the data steps too.
for override in "${GRPO_SITE[@]}" "$@"; do
    case "$override" in
        data.max_prompt_length=*) MAX_PROMPT_LENGTH=${override#*=}; data_options ;;
        data.max_response_length=*) MAX_RESPONSE_LENGTH=${override#*=} ;;
    esac
done
case " ${PREP[*]-} " in *" --shape "*) ;; *) PREP=(--shape m "${PREP[@]}") ;; esac
# BUILD_RL_ARGS: build-rl options for every RL run (e.g. "--engine ray"), before the run's own.
read -r -a BUILD_RL_EXTRA <<< "${BUILD_RL_ARGS:-}"
STUDENT_SAMPLES=${STUDENT_SAMPLES:-$DATA_DIR/student_samples/$(slug "$SFT_MODEL")_seed$SEED.jsonl}

student_pass "$STUDENT_SAMPLES" "$RL_RECORDS" "$SFT_MODEL" "$NUM_SAMPLES"
run confprofile build-rl --records "$RL_RECORDS" --samples "$STUDENT_SAMPLES" --calibration "$CALIBRATION" \
    --out "$DATA_DIR/$NAME" --val-fraction "$VAL_FRACTION" --seed "$SEED" "${DATA_OPTIONS[@]}" "${BUILD_RL_EXTRA[@]}" "${PREP[@]}"
run python -m verl.trainer.main_ppo --config-path="$CONFIG_DIR" --config-name=confprofile_grpo \
    data.train_files="$DATA_DIR/$NAME/rl_train.parquet" \
    data.val_files="$DATA_DIR/$NAME/rl_val.parquet" \
    data.max_prompt_length="$MAX_PROMPT_LENGTH" \
    data.max_response_length="$MAX_RESPONSE_LENGTH" \
    actor_rollout_ref.model.path="$SFT_MODEL" \
    confprofile.taxonomy="$TAXONOMY" \
    trainer.experiment_name="$NAME" \
    trainer.default_local_dir="$CKPT_DIR/$NAME" \
    trainer.n_gpus_per_node="$NGPUS" \
    "${GRPO_SITE[@]}" "$@"
echo "GRPO checkpoint: $(hf_checkpoint "$CKPT_DIR/$NAME")"
