"""The runner: one per node; registers, heartbeats, runs tasks pinned to their cores."""
