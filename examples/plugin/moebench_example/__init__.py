"""An example moebench strategy plugin (see docs/writing-a-strategy.md)."""
