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

run() {
    printf '+'
    printf ' %q' "$@"
    printf '\n'
    if [ -z "${DRY_RUN:-}" ]; then "$@"; fi
}
