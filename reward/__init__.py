"""verl adapters: group rewards (the public API, the vote board, both verl reward APIs) and the
confprofile and majority_vote reward managers built on them.

verl is imported first, whichever module of this package is imported first: ``import verl``
loads this package's ``verl.plugins`` entry point, which registers the managers, and that must
not start while one of the modules it imports is only half imported.
"""

import verl  # noqa: F401
