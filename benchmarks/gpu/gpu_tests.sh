#!/usr/bin/env bash
# One device call: every test marked `gpu` (the compiled twins of the interpret-mode kernel tests,
# and the FLA comparisons), spread over WORKERS pytest-xdist processes sharing the GPU (compiling
# the Pallas kernels is the slow part and runs on the host's cores), each test reported as it
# ends, a summary line per file last. Tests that fail in the shared run are run again one at a time
# with the GPU to themselves (a neighbour's memory can starve a test); both outcomes are printed.
#   bash benchmarks/gpu/gpu_tests.sh   (on the GPU, OUT set; FLA's wheel under .carry/fla)
# Env: FILES (test files, folders or node ids, default tests/ops tests/kernels), WORKERS (6),
# TOTAL_S (570).
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
source benchmarks/gpu/fla_env.sh
# Several processes share one GPU: none may preallocate, none may keep what it freed.
export JAXLA_TEST_GPU=1 XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_ALLOCATOR=platform
FILES=${FILES:-tests/ops tests/kernels}
log="$OUT/gpu_tests.log"
# Each failure's report as it happens (tests/conftest.py): the time limit may stop pytest first.
export JAXLA_TEST_FAILURES="$OUT/gpu_failures.log"
timeout "${TOTAL_S:-570}" python3 -m pytest -v --tb=short -p no:cacheprovider -m gpu \
  -n "${WORKERS:-6}" $FILES > "$log" 2>&1
echo "pytest rc=$? ($(grep -o '[0-9]* workers' "$log" | head -1))"
for f in $FILES; do  # files or node ids (fixed strings: ids have brackets)
  lines=$(grep -F -- "$f" "$log")
  echo "$f: passed $(grep -c " PASSED" <<<"$lines"), failed $(grep -c " FAILED" <<<"$lines")," \
       "skipped $(grep -c " SKIPPED" <<<"$lines")"
done
tail -1 "$log"
[ -s "$JAXLA_TEST_FAILURES" ] && grep -h "^== \|^E " "$JAXLA_TEST_FAILURES" | head -40
failed=$(grep -o '^FAILED [^ ]*' "$log" | cut -d' ' -f2 | sort -u)
if [ -n "$failed" ]; then
  echo "again, one at a time:"
  timeout 240 env -u XLA_PYTHON_CLIENT_ALLOCATOR \
    python3 -m pytest -v --tb=short -p no:cacheprovider -m gpu $failed \
    > "$OUT/gpu_tests_again.log" 2>&1
  grep " PASSED\| FAILED" "$OUT/gpu_tests_again.log"; tail -1 "$OUT/gpu_tests_again.log"
  grep -h "^E " "$OUT/gpu_tests_again.log" | head -20
fi
save_autotune
