#!/usr/bin/env bash
# One device call: every test marked `gpu` (the compiled twins of the interpret-mode kernel tests,
# and the FLA comparisons), one file per stage under its own time limit, each test reported as it
# ends (pytest -v, unbuffered), a summary line per file last.
#   bash benchmarks/gpu/gpu_tests.sh   (on the GPU, OUT set; FLA's wheel under .carry/fla)
# Env: FILES (test files, default the four kernel files), PER_FILE_S (default 280), TOTAL_S (570).
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
source benchmarks/gpu/fla_env.sh
export JAXLA_TEST_GPU=1
DEADLINE=$(( $(date +%s) + ${TOTAL_S:-570} ))
FILES=${FILES:-tests/kernels/test_gla_kernel.py tests/kernels/test_simple_gla_kernel.py \
tests/kernels/test_selective_scan_kernel.py tests/kernels/test_selective_scan_chunks.py}
for f in $FILES; do
  left=$(( DEADLINE - $(date +%s) )); [ "$left" -lt 30 ] && { echo "skip $f"; continue; }
  per=${PER_FILE_S:-280}; t=$(( per < left ? per : left ))
  log="$OUT/$(basename "$f" .py).log"
  timeout "$t" python3 -m pytest -v --tb=short -p no:cacheprovider -m gpu "$f" > "$log" 2>&1
  rc=$?
  echo "$f rc=$rc: $(grep -o '[0-9]* selected' "$log" | head -1), passed $(grep -c ' PASSED' "$log")," \
       "failed $(grep -c ' FAILED' "$log"), skipped $(grep -c ' SKIPPED' "$log")"
done
save_autotune
grep -h " FAILED\|^E " "$OUT"/*.log | head -20
