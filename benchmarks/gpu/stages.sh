#!/usr/bin/env bash
# One device call, in stages that share one time budget: GPU tests, the kernel benchmarks beside
# their anchors, the dense kernels of an earlier commit in the same run, and scripts run as is.
#   STAGES="tests kernels before" bash benchmarks/gpu/stages.sh     (on the GPU, OUT set)
# Stages:
#   tests    every `gpu`-marked test of TEST_FILES (default tests/ops tests/kernels), over WORKERS
#            xdist processes (gpu_tests.sh)
#   kernels  python -m benchmarks.kernels $KERNEL_ARGS (jaxla beside jla, FLA, cuDNN)
#   before   the dense jaxla rows of the commit unpacked under .carry/before (`git archive REV
#            jaxla pallas_kernels | tar -x -C .carry/before`), same command, label "before"
#   script   any command: SCRIPT="python3 benchmarks/gpu/foo.py"
# Env: STAGE_S_<stage> (seconds for that stage), TOTAL_S (whole budget, default 570).
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
source benchmarks/gpu/fla_env.sh
DEADLINE=$(( $(date +%s) + ${TOTAL_S:-570} ))
stage() {  # stage NAME SECONDS COMMAND...: at most SECONDS (and what is left of the budget)
  local name=$1 want=$2; shift 2
  local left=$(( DEADLINE - $(date +%s) ))
  [ "$left" -lt 30 ] && { echo "skip $name (budget)"; return; }
  local t=$(( want < left ? want : left )) t0; t0=$(date +%s)
  timeout "$t" "$@" > "$OUT/$name.log" 2>&1
  echo "== $name rc=$? in $(( $(date +%s) - t0 )) s"
}
BANDWIDTH=${BANDWIDTH:-}
for name in ${STAGES:-tests kernels before}; do
  case $name in
    tests) FILES=${TEST_FILES:-tests/ops tests/kernels} TOTAL_S=${STAGE_S_tests:-300} \
             bash benchmarks/gpu/gpu_tests.sh > "$OUT/tests_summary.log" 2>&1
           echo "== tests"; cat "$OUT/tests_summary.log" ;;
    kernels) stage kernels ${STAGE_S_kernels:-240} python3 -m benchmarks.kernels \
               ${KERNEL_ARGS:---variant jaxla jla cudnn\ causal} --out "$OUT" \
               ${BANDWIDTH:+--bandwidth $BANDWIDTH} ;;
    before) stage before ${STAGE_S_before:-120} env PYTHONPATH=.carry/before:$PYTHONPATH \
              python3 -m benchmarks.kernels --packing dense --variant jaxla --label before \
              ${BEFORE_ARGS:-} --out "$OUT" ;;
    script) stage script ${STAGE_S_script:-300} bash -c "$SCRIPT" ;;
    *) echo "unknown stage $name" ;;
  esac
done
save_autotune
for name in kernels before script; do
  [ -f "$OUT/$name.log" ] && { echo "== $name"; grep -av "^\[\|Constant folding\|slow_op" \
    "$OUT/$name.log" | tail -40; }
done
