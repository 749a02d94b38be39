#!/usr/bin/env bash
# The paper's ablations, each as data-prep options and/or Hydra overrides of the same configs.
#   bash recipes/run_ablation.sh NAME
# NAME                  paper      what changes
# main                  Table 1    the full method: SFT, then GRPO on the m-shape RL set
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
source "$(dirname "$0")/common.sh"
NAME=${1:?usage: run_ablation.sh NAME (see the header of this file)}
SFT_MODEL=${SFT_MODEL:-$CKPT_DIR/sft/huggingface}
HERE=$(dirname "$0")

case "$NAME" in
    main)             bash "$HERE/run_sft.sh" sft
                      bash "$HERE/run_grpo.sh" grpo "$SFT_MODEL" ;;
    sft_majority)     bash "$HERE/run_sft.sh" sft_majority --voting majority ;;
    no_calibration)   bash "$HERE/run_sft.sh" sft_linear --no-calibration
                      CALIBRATION=$DATA_DIR/sft_linear/calibration.json \
                      bash "$HERE/run_grpo.sh" grpo_linear "$CKPT_DIR/sft_linear/huggingface" ;;
    shape_original|shape_uniform|shape_v|shape_inverted_v)
                      bash "$HERE/run_grpo.sh" "grpo_${NAME}" "$SFT_MODEL" --shape "${NAME#shape_}" ;;
    self_confidence)  bash "$HERE/run_grpo.sh" grpo_self "$SFT_MODEL" -- confprofile.weighting=self ;;
    rl_majority)      bash "$HERE/run_grpo.sh" grpo_rl_majority "$SFT_MODEL" -- confprofile.voting=majority ;;
    profile_llm)      bash "$HERE/run_sft.sh" sft_profile_llm --voting majority --no-calibration
                      CALIBRATION=$DATA_DIR/sft_profile_llm/calibration.json \
                      bash "$HERE/run_grpo.sh" grpo_profile_llm "$CKPT_DIR/sft_profile_llm/huggingface" --shape original \
                          -- confprofile.voting=majority confprofile.weighting=none ;;
    *) echo "unknown ablation: $NAME (see the header of $0)" >&2; exit 2 ;;
esac
