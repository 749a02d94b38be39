"""verl-confprofile: label-free, confidence-driven user profiling (Conf-Profile) on verl.

The names exported here are the verl-independent core: importing this package imports neither
verl nor torch. The verl adapters live in ``verl_confprofile.reward``.
"""

from .calibration import Calibrator
from .metrics import PRF, average_scores, f1_score, precision_recall_f1, profile_scores, threshold_sweep
from .profile_format import DimensionOutput, parse_profile, render_profile
from .scoring import RewardSpec, group_rewards, rollout_reward
from .taxonomy import Dimension, Taxonomy, TaxonomyError
from .voting import Vote, vote, vote_profile

__version__ = "0.1.0"

__all__ = [
    "Calibrator",
    "Dimension",
    "DimensionOutput",
    "PRF",
    "RewardSpec",
    "Taxonomy",
    "TaxonomyError",
    "Vote",
    "average_scores",
    "f1_score",
    "group_rewards",
    "parse_profile",
    "precision_recall_f1",
    "profile_scores",
    "render_profile",
    "rollout_reward",
    "threshold_sweep",
    "vote",
    "vote_profile",
]
