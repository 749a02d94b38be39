"""verl plugin entry point: importing this registers the ``confprofile`` and ``majority_vote``
reward managers, each in both verl reward APIs.

``import verl`` imports every entry point of the ``verl.plugins`` group in every process (the
trainer, Ray workers included), which is how ``reward.reward_manager.name=confprofile`` resolves
after a plain ``pip install``, with no import step of the user's. It also registers the
managers' metric families and installs the hook that adds them to verl's training-step and
validation metrics (``reward.verl_metrics_hook``; ``CONFPROFILE_VERL_METRICS=0`` turns it off).

verl logs an entry point that fails to import at debug level only, so a broken install (a
missing dependency, a verl whose reward-manager API moved) would show up later as an unknown
reward manager. The registration is therefore guarded here: a failure is logged as a warning
that names its cause, in the process where it happened, then raised as before.
"""

import logging

logger = logging.getLogger(__name__)

try:
    from . import batch_manager, confprofile_metrics, majority_vote, manager, verl_metrics_hook  # noqa: F401  (registration happens on import)
except Exception as exc:
    logger.warning(
        "verl-confprofile: its reward managers (confprofile, majority_vote) could not be registered, so "
        "reward.reward_manager.name=confprofile or majority_vote will not resolve: %s: %s",
        type(exc).__name__,
        exc,
        exc_info=True,
    )
    raise
