"""Built-in strategies: each module holds only a strategy's decisions, loaded through the same
registry (`moebench.strategy.REGISTRY`, entry-point group `moebench.strategies`) a plugin uses."""
