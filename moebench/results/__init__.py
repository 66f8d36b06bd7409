"""Results: one versioned model of what a run wrote, one loader, one comparability rule, folders.

- `model` — `RunResult` (result.json + samples.jsonl of one run) and `Report` (report.json), read
  by one loader (`load_run`, `load_report`, `load_runs`) that refuses a missing or unknown
  `schema_version` with one sentence (`UserError`, exit 2);
- `compat` — the one comparability rule `moebench compare DIR...` and `moebench gate` share:
  same workload hash, model, clock, budget and strategy version;
- `folders` — new result and report folders, atomic writes, and a report put on disk;
- `export` — results and gate verdicts in the formats CI trackers read (github-action-benchmark,
  Bencher's BMF, JUnit XML, CSV): `moebench export` and `moebench gate --format`.

Nothing here imports the engine, the runner or the gate: they import this.
"""
