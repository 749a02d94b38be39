#!/usr/bin/env bash
# The paper's ablations, each as data-prep options and/or Hydra overrides of the same configs,
# each ending with the evaluation of the model it trained (run_eval.sh, out/eval/<run>).
#   bash recipes/run_ablation.sh NAME
# NAME                  paper      what changes
# main                  Table 1    the full method: SFT, then GRPO on the m-shape RL set (both evaluated)
# sft_majority          Table 2    teacher samples aggregated by majority voting (SFT stage)
# no_calibration        Table 4    linear confidence map instead of equal-frequency calibration (both stages)
# shape_original        Table 3    no difficulty filtering
# shape_uniform         Table 3    uniform difficulty
# shape_v               Table 3    V-shape difficulty
# shape_inverted_v      Table 3    inverted-V difficulty
# self_confidence       Table 5    reward weighted by the rollout's own score instead of the frozen one
# rl_majority           -          quasi ground truth by majority instead of confidence voting
# profile_llm           Table 1    baseline without confidence: majority voting, no calibration,
#                                  no filtering, unweighted reward
# The RL ablations start from SFT_MODEL (default: the main SFT run, $CKPT_DIR/sft) and share its
# student pass: run `main` (or run_sft.sh) first.
source "$(dirname "$0")/common.sh"
NAME=${1:?usage: run_ablation.sh NAME (see the header of this file)}
SFT_MODEL=${SFT_MODEL:-$CKPT_DIR/sft}
HERE=$(dirname "$0")

sft() {  # sft RUN [build-sft options]: train, then evaluate the SFT model
    bash "$HERE/run_sft.sh" "$@"
    bash "$HERE/run_eval.sh" "$1" "$CKPT_DIR/$1"
}
grpo() {  # grpo RUN SFT [build-rl options] [-- overrides]: train, then evaluate the policy
    bash "$HERE/run_grpo.sh" "$@"
    bash "$HERE/run_eval.sh" "$1" "$CKPT_DIR/$1"
}

case "$NAME" in
    main)             sft sft
                      grpo grpo "$CKPT_DIR/sft" ;;
    sft_majority)     sft sft_majority --voting majority ;;
    no_calibration)   sft sft_linear --no-calibration
                      CALIBRATION=$DATA_DIR/sft_linear/calibration.json grpo grpo_linear "$CKPT_DIR/sft_linear" ;;
    shape_original|shape_uniform|shape_v|shape_inverted_v)
                      grpo "grpo_${NAME}" "$SFT_MODEL" --shape "${NAME#shape_}" ;;
    self_confidence)  grpo grpo_self "$SFT_MODEL" -- confprofile.weighting=self ;;
    rl_majority)      grpo grpo_rl_majority "$SFT_MODEL" -- confprofile.voting=majority ;;
    profile_llm)      sft sft_profile_llm --voting majority --no-calibration
                      CALIBRATION=$DATA_DIR/sft_profile_llm/calibration.json \
                          grpo grpo_profile_llm "$CKPT_DIR/sft_profile_llm" --shape original \
                          -- confprofile.voting=majority confprofile.weighting=none ;;
    *) echo "unknown ablation: $NAME (see the header of $0)" >&2; exit 2 ;;
esac
