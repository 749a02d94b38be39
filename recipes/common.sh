# Shared settings of the recipes; every variable can be set from the environment.
# DRY_RUN=1 prints each command instead of running it.
set -euo pipefail

RECIPES_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CONFIG_DIR=${CONFIG_DIR:-$(cd "$RECIPES_DIR/../configs" && pwd)}
DATA_DIR=${DATA_DIR:-data}
MODEL=${MODEL:-Qwen/Qwen3-8B}
# One taxonomy for every step: teacher and student prompts, both builds, the reward
# (confprofile.taxonomy) and the evaluation. A bundled name or a YAML file.
TAXONOMY=${TAXONOMY:-profilebench}
if [ -f "$TAXONOMY" ]; then  # absolute, so the reward workers find it whatever their folder
    TAXONOMY=$(cd "$(dirname "$TAXONOMY")" && pwd)/$(basename "$TAXONOMY")
fi
TEACHER=${TEACHER:-deepseek-reasoner}
TEACHER_URL=${TEACHER_URL:-https://api.deepseek.com/v1}
# openai (any OpenAI-compatible endpoint: TEACHER at TEACHER_URL) or simulated (the stand-in
# teacher of the simulated population: demos and tests only).
TEACHER_BACKEND=${TEACHER_BACKEND:-openai}
NUM_SAMPLES=${NUM_SAMPLES:-10}
SFT_RECORDS=${SFT_RECORDS:-$DATA_DIR/sft_records.jsonl}
RL_RECORDS=${RL_RECORDS:-$DATA_DIR/rl_records.jsonl}
EVAL_RECORDS=${EVAL_RECORDS:-$DATA_DIR/eval_records.jsonl}
NGPUS=${NGPUS:-8}
CKPT_DIR=${CKPT_DIR:-checkpoints/confprofile}
# The student's passes (the reference pass before GRPO, the evaluation pass): vllm (offline,
# tensor parallel over NGPUS) or transformers (Hugging Face generate: no vLLM, small models, CPU);
# STUDENT_ARGS are extra synthesize options for both passes, e.g. "--device cuda:0 --batch-size 64".
STUDENT_BACKEND=${STUDENT_BACKEND:-vllm}
STUDENT_ARGS=${STUDENT_ARGS:-}
SEED=${SEED:-0}
# Site settings: extra Hydra overrides of each trainer (logger, nodes, memory, ...), appended
# after the recipe's own, so they win. Whitespace-separated, one override per word, e.g.
#   GRPO_OVERRIDES="trainer.logger=[console,wandb] trainer.nnodes=2" bash recipes/run_grpo.sh ...
SFT_OVERRIDES=${SFT_OVERRIDES:-}
GRPO_OVERRIDES=${GRPO_OVERRIDES:-}

# config_value FILE KEY.PATH: one value of a shipped config, so the token limits below default
# to what the trainers will enforce.
config_value() {
    python -c 'import sys, yaml
value = yaml.safe_load(open(sys.argv[1], encoding="utf-8"))
for key in sys.argv[2].split("."):
    value = value[key]
print(value)' "$1" "$2"
}
# One prompt-token budget for every prompt the recipes build: synthesize (teacher and student
# passes), build-sft and build-rl fit prompts by the same rule with the same tokenizer and
# limit, and GRPO gets it as data.max_prompt_length (default: the GRPO config's).
TOKENIZER=${TOKENIZER:-$MODEL}
MAX_PROMPT_LENGTH=${MAX_PROMPT_LENGTH:-$(config_value "$CONFIG_DIR/confprofile_grpo.yaml" data.max_prompt_length)}
# The student's passes are cut where GRPO cuts a rollout, so the frozen reference confidence and
# the evaluation see answers of the length the policy is trained to write.
MAX_RESPONSE_LENGTH=${MAX_RESPONSE_LENGTH:-$(config_value "$CONFIG_DIR/confprofile_grpo.yaml" data.max_response_length)}
# The longest SFT row, prompt and target (default: the SFT config's data.max_length, which verl
# enforces with truncation: error): build-sft skips and counts longer rows, and the SFT trainer
# gets the same value.
SFT_MAX_LENGTH=${SFT_MAX_LENGTH:-$(config_value "$CONFIG_DIR/confprofile_sft.yaml" data.max_length)}
read -r -a SFT_SITE <<< "$SFT_OVERRIDES"
read -r -a GRPO_SITE <<< "$GRPO_OVERRIDES"
read -r -a STUDENT_EXTRA <<< "$STUDENT_ARGS"

# Options every data step shares: the taxonomy and the prompt budget.
data_options() {
    DATA_OPTIONS=(--taxonomy "$TAXONOMY" --tokenizer "$TOKENIZER" --max-prompt-length "$MAX_PROMPT_LENGTH")
}
data_options

run() {
    printf '+'
    printf ' %q' "$@"
    printf '\n'
    if [ -z "${DRY_RUN:-}" ]; then "$@"; fi
}

# hf_checkpoint DIR: the Hugging Face model a stage hands on. DIR is a Hugging Face folder
# (config.json and weights), or a trainer's checkpoint folder (trainer.default_local_dir),
# whose latest global_step_N holds huggingface/ (SFT) or actor/huggingface/ (GRPO); verl writes
# the weights there with checkpoint.save_contents including hf_model, as the configs ask.
# Under DRY_RUN a folder not yet written is printed as it is.
hf_checkpoint() {
    local dir=${1%/} step candidate
    if has_weights "$dir"; then echo "$dir"; return; fi
    step=$(latest_step "$dir")
    for candidate in "$dir/global_step_$step/huggingface" "$dir/global_step_$step/actor/huggingface"; do
        if [ -n "$step" ] && has_weights "$candidate"; then echo "$candidate"; return; fi
    done
    if [ -n "${DRY_RUN:-}" ]; then echo "$dir"; return; fi
    echo "error: $dir holds no Hugging Face model (config.json and weights), nor a global_step_N/huggingface or" \
         "global_step_N/actor/huggingface with weights; train it first, or pass the folder of a Hugging Face model" >&2
    return 2
}
has_weights() {
    [ -f "$1/config.json" ] && { compgen -G "$1/*.safetensors" > /dev/null || compgen -G "$1/pytorch_model*.bin" > /dev/null; }
}
# latest_step DIR: verl's latest_checkpointed_iteration.txt, else the highest global_step_N.
latest_step() {
    if [ -f "$1/latest_checkpointed_iteration.txt" ]; then
        tr -d '[:space:]' < "$1/latest_checkpointed_iteration.txt"
    else
        find "$1" -maxdepth 1 -name 'global_step_*' -printf '%f\n' 2>/dev/null | sed 's/^global_step_//' | sort -n | tail -n 1
    fi
}

# student_pass OUT RECORDS MODEL M [synthesize options...]: M samples per user from MODEL, seeded
# (SEED), cut at MAX_RESPONSE_LENGTH; resumed (nothing drawn twice) when OUT already holds some.
student_pass() {
    local out=$1 records=$2 model=$3 samples=$4
    shift 4
    local engine=()
    [ "$STUDENT_BACKEND" = vllm ] && engine=(--engine-arg tensor_parallel_size="$NGPUS")
    run mkdir -p "$(dirname "$out")"
    run confprofile synthesize --records "$records" --out "$out" --backend "$STUDENT_BACKEND" --model "$model" \
        --num-samples "$samples" --seed "$SEED" --max-tokens "$MAX_RESPONSE_LENGTH" "${DATA_OPTIONS[@]}" \
        "${engine[@]}" "${STUDENT_EXTRA[@]}" "$@"
}

# slug PATH: a file name made of a path, so a folder names the model it holds.
slug() {
    local path=${1#./}
    path=${path#/}
    echo "${path//\//_}"
}
