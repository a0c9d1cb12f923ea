#!/usr/bin/env bash
# One device call: the kernel benchmark of the three ops (Pallas vs the xla path vs FLA vs cuDNN
# flash attention) at T = 4096 and the FLA agreement tests of the GLA / simple GLA kernels.
#   bash benchmarks/gpu/kernels_and_fla.sh   (on the GPU, OUT set; FLA's wheel under .carry/fla)
# Env: TS (sequence lengths, default 4096), TOTAL_S (whole budget, default 560 s). Every row is
# printed as soon as it is measured (stderr of each log), so a stage cut short keeps its rows.
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
source benchmarks/gpu/fla_env.sh
DEADLINE=$(( $(date +%s) + ${TOTAL_S:-560} ))
left() { echo $(( DEADLINE - $(date +%s) )); }
stage() {  # stage NAME SECONDS COMMAND...: run with at most SECONDS (and what is left)
  local name=$1 want=$2; shift 2
  local l; l=$(left); [ "$l" -lt 30 ] && { echo "skip $name"; return; }
  local t=$(( want < l ? want : l )); local t0; t0=$(date +%s)
  timeout "$t" "$@" > "$OUT/$name.log" 2>&1
  echo "$name rc=$? in $(( $(date +%s) - t0 )) s"
}
run_stage() {
  case $1 in
    bench_gla) stage bench_gla ${GLA_S:-170} python3 -m benchmarks.kernels --op gla \
      --out "$OUT/gla" --T ${TS:-4096} ;;
    fla_tests) stage fla_tests ${FLA_S:-150} env JAXLA_TEST_GPU=1 python3 -m pytest -v -s \
      --tb=short -p no:cacheprovider -m gpu -k "${FLA_K:-fla}" tests/kernels/test_gla_kernel.py \
      tests/kernels/test_simple_gla_kernel.py ;;
    bench_simple_gla) stage bench_simple_gla ${SGLA_S:-150} python3 -m benchmarks.kernels \
      --op simple_gla --out "$OUT/simple_gla" --T ${TS:-4096} ;;
    bench_selective_scan) stage bench_selective_scan ${SCAN_S:-120} python3 -m benchmarks.kernels \
      --op selective_scan --out "$OUT/selective_scan" --T ${TS:-4096} ;;
    *) echo "unknown stage $1" ;;
  esac
}
for name in ${STAGES:-bench_gla fla_tests bench_simple_gla bench_selective_scan}; do
  run_stage "$name"
done
save_autotune
for name in bench_gla bench_simple_gla bench_selective_scan; do
  echo "== $name"; grep -a "^\[\|^fwd\|^fwd+bwd\|^memory\|^[a-z(].*  " "$OUT/$name.log" 2>/dev/null \
    | grep -av "Constant folding\|slow_operation" | tail -16
done
echo "== fla_tests"; grep -a "PASSED\|FAILED\|ERROR\|passed\|failed\|ours-vs" "$OUT/fla_tests.log" | tail -12
