"""Models: presets, loading (eager and lazy), one adapter per architecture family, packed formats."""
