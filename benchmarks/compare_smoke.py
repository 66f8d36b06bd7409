"""How long `moebench compare` takes over every built-in strategy on the smoke workload.

    .venv/bin/python benchmarks/compare_smoke.py [--threads 1] [--no-plots] [--keep DIR]

Runs the same comparison the CI gate runs (`moebench.bench.compare.SMOKE`: default model, smoke
workload, cache budget 0.25, simulated clock on a6000-pcie4) through the library, report and plots
included, and prints the wall time of the whole comparison — model load, every strategy's run,
statistics, report files — as `compare_smoke_seconds=<x>` on the last line. The Python and torch
import is not counted (it is printed separately); transformers' import (inside the model load)
is. Target on 2 CPU cores: <= 12 s, with the calibration artifacts in the artifact cache
(`$MOEBENCH_CACHE`; a cold cache calibrates first, some 10 s more here). The lossless
strategies share one forward (`moebench.engine.lockstep`); `MOEBENCH_SHARED_FORWARD=0` runs
each on its own, for comparison. Figures: benchmarks/RESULTS.md, "Speed (issue 17)".
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

t_import = time.perf_counter()
import torch  # noqa: E402

from moebench.bench import compare as C  # noqa: E402

t_import = time.perf_counter() - t_import


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the CI gate uses 1)")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--keep", type=Path, default=None, help="write the report here instead of a temp folder")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names, skipped = C.resolve_strategies(None)
    plan = C.ComparePlan(C.SMOKE, names, C.choose_baseline(names, None), plots=not args.no_plots,
                         skipped=skipped)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.keep or Path(tmp)
        t0 = time.perf_counter()
        d = C.run_compare(plan, out)
        seconds = time.perf_counter() - t0
    print(f"strategies={','.join(names)}")
    if skipped:
        print(f"skipped={','.join(n for n, _ in skipped)}")
    print(f"report={d}" if args.keep else "report=(temporary, removed)")
    print(f"import_seconds={t_import:.2f}")
    print(f"torch_threads={args.threads}")
    print(f"compare_smoke_seconds={seconds:.2f}")


if __name__ == "__main__":
    main()
