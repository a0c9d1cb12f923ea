#!/usr/bin/env bash
# One device call for the selective scan, in the stages STAGES names, in that order:
#   new    jaxla's kernels over T, the xla path at T=4096 (benchmarks.gpu.scan_compare)
#   old    a second version of the kernels at T=4096 (.carry/old/pallas_kernels, e.g. from
#          `git archive HEAD pallas_kernels | tar -x -C .carry/old`)
#   blocks the kernels over T on other BlockSizes (BLOCKS: space-separated sets of comma-joined
#          NAME=VALUE fields, each optionally with its own T list after '@', ':'-joined, e.g.
#          "chunk=128 chunk=256,unroll=2@1024:4096"; no xla rows, no peak memory)
#   tune   forward-only tuning, then fwd+bwd of the default and the best forward
#          (benchmarks.gpu.selective_scan_tune --forward-only)
#   tests  the GPU-marked selective-scan tests (benchmarks/gpu/gpu_tests.sh)
#   mamba  mamba_ssm's CUDA kernel timed on the same inputs, its output and gradients checked
#          against jaxla's (needs the `new` stage's arrays for the check)
# mamba_ssm is built from its sdist (.carry/mamba_ssm) on the CPU from the start, while the GPU
# runs the other stages.   bash benchmarks/gpu/scan_vs_mamba_ssm.sh   (on the GPU, OUT set)
# Env: STAGES (default "new old tests mamba"); TS (jaxla's T, the first checked against mamba_ssm;
# default 4096 1024 2048 8192); XLA_TS (T of the new stage's xla rows, default 4096; "" for
# none); TEST_FILES (test files or node ids); JOBS (nvcc jobs, 8);
# NEW_S, OLD_S, TUNE_S, TESTS_S (stage limits, s); TUNE_BUDGET (s for the forward variants);
# TUNE_ARGS (more selective_scan_tune options); END_S (when to stop waiting for the build).
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
TS=${TS:-4096 1024 2048 8192}
src=.carry/mamba_ssm
show() { grep -v '^{' "$1" | grep -v Warning | tail -"$2"; }

new() {
  timeout "${NEW_S:-210}" env PYTHONPATH=. python3 -m benchmarks.gpu.scan_compare --label new \
    --T $TS --xla-T ${XLA_TS-4096} --save-npz /tmp/jaxla_scan.npz > "$OUT/scan_new.log" 2>&1
  echo "rc=$?"; show "$OUT/scan_new.log" 8
}
blocks() {
  local b fields ts label
  for b in ${BLOCKS:-}; do
    fields=${b%%@*}
    ts=$TS
    [[ $b == *@* ]] && ts=${b#*@} && ts=${ts//:/ }
    label=$(tr '=,@:' '-_._' <<<"$b")  # file names under OUT: letters, digits, '.', '_', '-'
    timeout "${NEW_S:-210}" env PYTHONPATH=. python3 -m benchmarks.gpu.scan_compare \
      --label "$label" --T $ts --xla-T --no-peak --blocks ${fields//,/ } \
      > "$OUT/scan_$label.log" 2>&1
    echo "$b: rc=$?"; show "$OUT/scan_$label.log" 5
  done
}
old() {
  # from inside .carry/old, whose pallas_kernels then comes first on sys.path
  (cd .carry/old && timeout "${OLD_S:-80}" env PYTHONPATH="$OLDPWD" python3 -m \
    benchmarks.gpu.scan_compare --label old --T 4096 --xla-T > "$OUT/scan_old.log" 2>&1)
  echo "rc=$?"; show "$OUT/scan_old.log" 3
}
tune() {
  timeout "${TUNE_S:-200}" env PYTHONPATH=. python3 -m benchmarks.gpu.selective_scan_tune \
    --forward-only --budget "${TUNE_BUDGET:-90}" ${TUNE_ARGS:-} > "$OUT/scan_tune.log" 2>&1
  echo "rc=$?"; grep -v Warning "$OUT/scan_tune.log" | sed -n '/^forward (saving/,$p'
}
tests() {
  local files="tests/kernels/test_selective_scan_kernel.py
               tests/kernels/test_selective_scan_chunks.py"
  FILES=${TEST_FILES:-$files} WORKERS=${WORKERS:-6} TOTAL_S=${TESTS_S:-170} \
    bash benchmarks/gpu/gpu_tests.sh 2>&1 | grep -v autotune
}
mamba() {
  [ -n "${build_pid:-}" ] || { echo "no mamba_ssm sdist under $src"; return; }
  while kill -0 "$build_pid" 2>/dev/null && [ "$SECONDS" -lt "${END_S:-520}" ]; do sleep 5; done
  tail -2 "$OUT/mamba_build.log"
  if kill -0 "$build_pid" 2>/dev/null || ! grep -q "build rc=0" "$OUT/mamba_build.log"; then
    echo "mamba_ssm build not finished or failed"; grep -i error "$OUT/mamba_build.log" | head -5
    return
  fi
  local first_T=${TS%% *} check=()
  [ -f /tmp/jaxla_scan.npz ] && check=(--check /tmp/jaxla_scan.npz)
  timeout 75 env PYTHONPATH=. JAX_PLATFORMS=cpu python3 -m benchmarks.gpu.mamba_ssm_ref bench \
    --src "$src" --T $TS "${check[@]}" > "$OUT/mamba_bench.log" 2>&1
  echo "rc=$? (check against jaxla at T=$first_T: ${check[*]:-none})"
  grep -v Warning "$OUT/mamba_bench.log" | grep -v from_numpy | tail -12
}

STAGES=${STAGES:-new old tests mamba}
if [[ -d "$src" && " $STAGES " == *" mamba "* ]]; then
  (python3 -m benchmarks.gpu.mamba_ssm_ref build --src "$src" --jobs "${JOBS:-8}" \
     > "$OUT/mamba_build.log" 2>&1; echo "build rc=$?" >> "$OUT/mamba_build.log") &
  build_pid=$!
fi
for s in $STAGES; do
  echo "== $s at $SECONDS s"
  "$s"
done
echo "== done at $SECONDS s"
