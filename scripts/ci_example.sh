#!/usr/bin/env bash
# moebench in your CI (docs/ci.md includes this file verbatim; tests/cli/test_ci_example.py runs it):
# rerun the comparison recorded in a committed baseline on the simulated clock, gate it against
# the baseline (JUnit XML for the CI's test report), and export the numbers for the trackers.
#
#   MOEBENCH_BASELINE   the committed baseline report folder      (default reports/baselines/smoke)
#   MOEBENCH_CI_OUT     a new or empty folder for what is written (default moebench-ci)
#   MOEBENCH_CANDIDATE  gate this report or result folder instead of rerunning the baseline's plan
#   MOEBENCH            the moebench command                      (default moebench)
#
# Exit code: the gate's (0 pass, 1 regression, 2 usage error, 3 inconclusive or mismatched). The
# exports are written whatever the verdict, so the CI can publish them.
set -euo pipefail
baseline=${MOEBENCH_BASELINE:-reports/baselines/smoke}
out=${MOEBENCH_CI_OUT:-moebench-ci}
moebench=${MOEBENCH:-moebench}
if [ -e "$out" ] && [ -n "$(ls -A "$out")" ]; then
  echo "ci: $out is not empty; set MOEBENCH_CI_OUT to a new folder" >&2
  exit 2
fi
mkdir -p "$out"

# 1. The candidate: the plan recorded in the baseline (model, workload, strategies, budget,
#    simulated clock), rerun as the baseline was made: one thread, calibrations redone.
candidate=${MOEBENCH_CANDIDATE:-}
if [ -z "$candidate" ]; then
  cache=$(mktemp -d)
  trap 'rm -rf "$cache"' EXIT
  OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 MOEBENCH_CACHE="$cache" \
    "$moebench" compare --plan-from "$baseline" --no-plots --out "$out" --name candidate
fi
candidate=${candidate:-$out/candidate}

# 2. The verdict: the table in the log, JUnit XML for the test report; keep the exit code.
rc=0
"$moebench" gate "$baseline" "$candidate" --format junit --out "$out/gate.xml" || rc=$?

# 3. The numbers: github-action-benchmark (one file per good direction), Bencher (BMF), CSV.
"$moebench" export "$candidate" --format github-smaller --out "$out/benchmark-smaller.json"
"$moebench" export "$candidate" --format github-bigger --out "$out/benchmark-bigger.json"
"$moebench" export "$candidate" --format bmf --out "$out/bencher.json"
"$moebench" export "$candidate" --format csv --out "$out/results.csv"

echo "ci: gate exit $rc; verdicts in $out/gate.xml; numbers in $out/benchmark-*.json, $out/bencher.json, $out/results.csv"
exit "$rc"
