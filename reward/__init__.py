"""verl adapters: group rewards (the public API, the vote board, both verl reward APIs) and the
confprofile and majority_vote reward managers built on them."""
