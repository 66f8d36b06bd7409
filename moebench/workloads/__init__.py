"""Workloads: `spec` (YAML specs, tokenised requests, the workload hash) and `datasets` (JSONL datasets and few-shot prompts)."""
