"""Studies: many sweeps (entries × benchmarks × seeds) in one command, and their leaderboard."""
