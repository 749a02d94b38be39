"""verl plugin entry point: importing this registers the ``confprofile`` and ``majority_vote``
reward managers, each in both verl reward APIs.

``import verl`` imports every entry point of the ``verl.plugins`` group in every process (the
trainer, Ray workers included), which is how ``reward.reward_manager.name=confprofile`` resolves
after a plain ``pip install``, with no import step of the user's.
"""

from . import batch_manager, majority_vote, manager  # noqa: F401  (registration happens on import)
