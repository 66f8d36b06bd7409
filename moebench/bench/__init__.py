"""Orchestration: `run` (prepare -> artifacts -> engine -> result -> accuracy -> folder), `compare` (strategies side by side, sweeps), `validate_sim` (the simulator against CUDA events)."""
