#!/usr/bin/env bash
# One device call: FLA agreement tests of the GLA / simple GLA kernels, then the kernel benchmark
# of all three ops (Pallas vs the xla path vs FLA vs cuDNN flash attention).
#   bash benchmarks/gpu/kernels_and_fla.sh   (on the GPU, OUT set; FLA's wheel under .carry/fla)
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/fla
python3 -c "import glob, zipfile; [zipfile.ZipFile(w).extractall('/tmp/fla') for w in glob.glob('.carry/fla/*.whl')]"
export PYTHONPATH=/tmp/fla:.
budget() { echo $(( ${DEADLINE} - $(date +%s) )); }
DEADLINE=$(( $(date +%s) + ${TOTAL_S:-560} ))
JAXLA_TEST_GPU=1 timeout 170 python3 -m pytest -q -p no:cacheprovider -m gpu -k fla \
  tests/kernels/test_gla_kernel.py tests/kernels/test_simple_gla_kernel.py \
  > "$OUT/fla_tests.log" 2>&1
echo "fla tests rc=$?"; tail -3 "$OUT/fla_tests.log"
for op in ${OPS:-gla simple_gla selective_scan}; do
  left=$(budget); [ "$left" -lt 40 ] && { echo "skip $op"; continue; }
  per=$(( left < 190 ? left : 190 ))
  # T = 4096 (the anchors' length) first, so a run cut short still has it.
  if [ "$op" = selective_scan ]; then Ts="4096 1024 2048 8192"; else Ts="4096 1024 2048 8192 16384"; fi
  timeout "$per" python3 -m benchmarks.kernels --op "$op" --out "$OUT/$op" --T $Ts \
    > "$OUT/bench_$op.log" 2>&1
  echo "bench $op rc=$?"
done
for op in ${OPS:-gla simple_gla selective_scan}; do
  echo "== $op"; grep -v "^\s*$" "$OUT/bench_$op.log" | tail -14
done
