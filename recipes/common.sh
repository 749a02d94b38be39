# Shared settings of the recipes; every variable can be set from the environment.
# DRY_RUN=1 prints each command instead of running it (the tests check recipes that way).
set -euo pipefail

RECIPES_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CONFIG_DIR=${CONFIG_DIR:-$(cd "$RECIPES_DIR/../configs" && pwd)}
DATA_DIR=${DATA_DIR:-data}
MODEL=${MODEL:-Qwen/Qwen3-8B}
TEACHER=${TEACHER:-deepseek-reasoner}
TEACHER_URL=${TEACHER_URL:-https://api.deepseek.com/v1}
NUM_SAMPLES=${NUM_SAMPLES:-10}
SFT_RECORDS=${SFT_RECORDS:-$DATA_DIR/sft_records.jsonl}
RL_RECORDS=${RL_RECORDS:-$DATA_DIR/rl_records.jsonl}
NGPUS=${NGPUS:-8}
CKPT_DIR=${CKPT_DIR:-checkpoints/confprofile}

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
# The longest SFT row, prompt and target (default: the SFT config's data.max_length, which verl
# enforces with truncation: error): build-sft skips and counts longer rows, and the SFT trainer
# gets the same value.
SFT_MAX_LENGTH=${SFT_MAX_LENGTH:-$(config_value "$CONFIG_DIR/confprofile_sft.yaml" data.max_length)}
BUDGET=(--tokenizer "$TOKENIZER" --max-prompt-length "$MAX_PROMPT_LENGTH")

run() {
    printf '+'
    printf ' %q' "$@"
    printf '\n'
    if [ -z "${DRY_RUN:-}" ]; then "$@"; fi
}
