"""verl plugin entry point: importing this registers both ``confprofile`` reward managers.

``import verl`` imports every entry point of the ``verl.plugins`` group in every process (the
trainer, Ray workers included), which is how ``reward.reward_manager.name=confprofile`` resolves
after a plain ``pip install``, with no import step of the user's. It also registers the
managers' metric families and installs the hook that adds them to verl's training-step and
validation metrics (``reward.verl_metrics_hook``; ``CONFPROFILE_VERL_METRICS=0`` turns it off).
"""

from . import batch_manager, confprofile_metrics, manager, verl_metrics_hook  # noqa: F401  (registration happens on import)
