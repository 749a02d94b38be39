"""Data preparation: teacher sampling, the SFT set and the RL set."""
