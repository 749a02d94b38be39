"""verl adapters: the confprofile reward managers and the cross-worker vote board."""
