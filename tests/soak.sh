#!/usr/bin/env bash
# Runs one test N times and counts: a fault test that fails once in thirty runs is a bug.
#
#   tests/soak.sh <test name> <runs>
#
# The test is found by its exact name in the workspace's test executables (built with the same
# selection as `make test`). Each failed run's output is kept under $SOAK_DIR (default:
# target-dir/soak/<test>), with the job directories (AUTOGLM_TEST_KEEP), to read the logs; what
# each passing run printed last (the chaos test's figures) goes to passed.log there.
set -euo pipefail

name=${1:?usage: soak.sh <test name> <runs>}
runs=${2:?usage: soak.sh <test name> <runs>}
target=${CARGO_TARGET_DIR:-target}
keep=${SOAK_DIR:-$target/soak/$name}

executables=$(cargo test --workspace --all-targets --features autoglm/failpoints --no-run \
  --message-format=json 2>/dev/null |
  sed -n 's/.*"executable":"\([^"]*\)".*/\1/p')
exe=
for candidate in $executables; do
  if "$candidate" --list --format=terse 2>/dev/null | grep -qx "$name: test"; then
    exe=$candidate
    break
  fi
done
[[ -n $exe ]] || { echo "soak: no test named $name" >&2; exit 2; }

rm -rf "$keep"
mkdir -p "$keep"
passed=0
failed=0
started=$SECONDS
for ((run = 1; run <= runs; run++)); do
  out=$keep/run-$run.log
  t0=$SECONDS
  if AUTOGLM_TEST_KEEP=1 TMPDIR=$keep "$exe" "$name" --exact --nocapture >"$out" 2>&1; then
    passed=$((passed + 1))
    verdict=pass
    # Keep only what failed runs left behind, and the last lines of what passing ones printed.
    find "$keep" -mindepth 1 -maxdepth 1 -name 'autoglm-job*' -exec rm -rf {} +
    { echo "== run $run"; grep -v '^$' "$out" | tail -n 12; } >>"$keep/passed.log"
    rm -f "$out"
  else
    failed=$((failed + 1))
    verdict=FAIL
    mkdir -p "$keep/failed-$run"
    find "$keep" -mindepth 1 -maxdepth 1 -name 'autoglm-job*' -exec mv {} "$keep/failed-$run/" \;
  fi
  echo "soak: $name run $run/$runs $verdict in $((SECONDS - t0)) s (passed $passed, failed $failed)"
done
echo "soak: $name: $passed/$runs passed, $failed failed, in $((SECONDS - started)) s; failed runs' logs in $keep"
((failed == 0))
