"""What a strategy costs in accuracy: `fidelity` (the metrics and their statistics), `scoring` (pure per-item scoring), `run` (teacher-forced runs against a lossless reference)."""
