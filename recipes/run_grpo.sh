#!/usr/bin/env bash
# Stage 2 (section 4.3): student reference pass -> RL set with difficulty filtering -> GRPO.
#   bash recipes/run_grpo.sh NAME SFT_MODEL [build-rl options...] [-- main_ppo overrides...]
# The student (SFT_MODEL, a HF checkpoint) samples the RL pool once, offline with vLLM; build-rl
# turns those samples into frozen reference confidences and difficulty (default shape: m) and
# holds out VAL_FRACTION of the users (default 0.05) as rl_val.parquet, then verl's main_ppo runs
# GRPO with the confprofile reward, validating on them before training and every 5 steps.
# The student pass and build-rl fit prompts to the budget main_ppo is given as data.max_prompt_length
# (TOKENIZER, MAX_PROMPT_LENGTH in common.sh; a data.max_prompt_length override sets it too).
# e.g. `bash recipes/run_grpo.sh grpo_uniform ckpt/sft --shape uniform`                 (Table 3)
#      `bash recipes/run_grpo.sh grpo_self ckpt/sft -- confprofile.weighting=self`     (Table 5)
source "$(dirname "$0")/common.sh"
NAME=${1:?usage: run_grpo.sh NAME SFT_MODEL [build-rl options] [-- overrides]}
SFT_MODEL=${2:?usage: run_grpo.sh NAME SFT_MODEL [build-rl options] [-- overrides]}
shift 2
CALIBRATION=${CALIBRATION:-$DATA_DIR/sft/calibration.json}
VAL_FRACTION=${VAL_FRACTION:-0.05}
PREP=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do PREP+=("$1"); shift; done
[ $# -gt 0 ] && shift
# A data.max_prompt_length override is the budget of the data steps too.
for override in "$@"; do
    case "$override" in data.max_prompt_length=*) MAX_PROMPT_LENGTH=${override#*=}; BUDGET=(--tokenizer "$TOKENIZER" --max-prompt-length "$MAX_PROMPT_LENGTH") ;; esac
done
case " ${PREP[*]-} " in *" --shape "*) ;; *) PREP=(--shape m "${PREP[@]}") ;; esac
STUDENT_SAMPLES=$DATA_DIR/$NAME/student_samples.jsonl

run mkdir -p "$DATA_DIR/$NAME"
run confprofile synthesize --records "$RL_RECORDS" --out "$STUDENT_SAMPLES" \
    --backend vllm --model "$SFT_MODEL" --num-samples "$NUM_SAMPLES" --engine-arg tensor_parallel_size="$NGPUS" "${BUDGET[@]}"
run confprofile build-rl --records "$RL_RECORDS" --samples "$STUDENT_SAMPLES" --calibration "$CALIBRATION" \
    --out "$DATA_DIR/$NAME" --val-fraction "$VAL_FRACTION" "${BUDGET[@]}" "${PREP[@]}"
run python -m verl.trainer.main_ppo --config-path="$CONFIG_DIR" --config-name=confprofile_grpo \
    data.train_files="$DATA_DIR/$NAME/rl_train.parquet" \
    data.val_files="$DATA_DIR/$NAME/rl_val.parquet" \
    data.max_prompt_length="$MAX_PROMPT_LENGTH" \
    actor_rollout_ref.model.path="$SFT_MODEL" \
    trainer.experiment_name="$NAME" \
    trainer.default_local_dir="$CKPT_DIR/$NAME" \
    trainer.n_gpus_per_node="$NGPUS" \
    "$@"
