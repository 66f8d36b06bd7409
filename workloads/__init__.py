"""Built-in workload definitions (YAML). `moebench run --workload NAME` finds them here."""
