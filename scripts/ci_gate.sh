#!/usr/bin/env bash
# The CI regression gate (called by .ci/run): rerun the smoke comparison recorded in the committed
# baseline, on the simulated clock (deterministic on any CPU), and gate it against the baseline.
# Exit 0 pass, 1 regression, 2 usage/config error, 3 inconclusive or mismatched (e.g. the default
# model changed: regenerate with `moebench baseline update` and commit reports/baselines/).
# Set MOEBENCH_CI_OUT=DIR to keep the candidate report (with plots) for inspection.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
keep=${MOEBENCH_CI_OUT:-}
out=${keep:-$(mktemp -d)}
[ -n "$keep" ] || trap 'rm -rf "$out"' EXIT
plots=()
[ -z "$keep" ] || plots=(--plots)
start=$(date +%s)
rc=0
.venv/bin/moebench baseline check --dir reports/baselines/smoke --out "$out" --name candidate "${plots[@]}" || rc=$?
echo "ci_gate: exit $rc after $(( $(date +%s) - start )) s (candidate report: $out/candidate)"
exit "$rc"
