#!/usr/bin/env bash
# One device call, in stages that share one time budget: GPU tests, the kernel benchmarks beside
# their anchors, the dense kernels of an earlier commit in the same run, and scripts run as is.
#   STAGES="tests kernels before" bash benchmarks/gpu/stages.sh     (on the GPU, OUT set)
# Stages:
#   tests    every `gpu`-marked test of TEST_FILES (default tests/ops tests/kernels), over WORKERS
#            xdist processes (gpu_tests.sh)
#   mamba_ssm  (optional) mamba_ssm's CUDA selective scan for the kernel benchmarks' `mamba_ssm`
#            variant (and the training anchor mamba_ssm_370m). Its sdist goes, unpacked, in
#            .carry/mamba_ssm (`tar xzf mamba_ssm-2.3.2.post1.tar.gz` and rename the folder, so
#            that .carry/mamba_ssm/csrc/selective_scan exists; ../shared/tools/get-anchor-wheels.sh
#            downloads the archive). When the stage is listed and the folder is there, the build
#            (benchmarks/gpu/mamba_ssm_ref.py: minutes of nvcc on the CPU, MAMBA_JOBS processes,
#            default 8) starts in the background as this script starts; the stage waits for it
#            (STAGE_S_mamba_ssm) and puts mamba_ssm on PYTHONPATH for the stages after it. List it
#            after a stage that keeps the GPU busy meanwhile: STAGES="tests mamba_ssm kernels".
#            Without the folder it says so, and the mamba_ssm rows say that it does not import.
#   kernels  python -m benchmarks.kernels $KERNEL_ARGS (jaxla beside jla, FLA, mamba_ssm, cuDNN)
#   before   the dense jaxla rows of the commit unpacked under .carry/before (`git archive REV
#            jaxla pallas_kernels | tar -x -C .carry/before`), same command, label "before"
#   script   any command: SCRIPT="python3 benchmarks/gpu/foo.py"
# Env: STAGE_S_<stage> (seconds for that stage), TOTAL_S (whole budget, default 570).
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)  # absolute: the before stage runs in another folder
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
MAMBA_SRC=$PWD/.carry/mamba_ssm MAMBA_BUILD=/tmp/mamba_ssm_build
if [[ " ${STAGES:-} " == *" mamba_ssm "* && -d $MAMBA_SRC ]]; then
  python3 -m benchmarks.gpu.mamba_ssm_ref --src "$MAMBA_SRC" --build-dir "$MAMBA_BUILD" \
    --jobs "${MAMBA_JOBS:-8}" > "$OUT/mamba_ssm_build.log" 2>&1 &
  mamba_build=$!
fi
mamba_ssm() {  # wait for the build, then make mamba_ssm importable for the later stages
  [ -n "${mamba_build:-}" ] || { echo "no mamba_ssm sdist under $MAMBA_SRC: not built"; return; }
  local until=$(( $(date +%s) + ${STAGE_S_mamba_ssm:-400} ))
  while kill -0 "$mamba_build" 2>/dev/null && [ "$(date +%s)" -lt "$until" ] \
        && [ "$(date +%s)" -lt $(( DEADLINE - 30 )) ]; do sleep 5; done
  if kill -0 "$mamba_build" 2>/dev/null; then
    echo "mamba_ssm build still running: not used"; return
  fi
  if wait "$mamba_build"; then
    export PYTHONPATH=$MAMBA_SRC:$MAMBA_BUILD:$PYTHONPATH
    tail -1 "$OUT/mamba_ssm_build.log"
  else
    echo "mamba_ssm build failed:"; grep -i "error" "$OUT/mamba_ssm_build.log" | head -5
  fi
}
for name in ${STAGES:-tests kernels before}; do
  case $name in
    tests) FILES=${TEST_FILES:-tests/ops tests/kernels} TOTAL_S=${STAGE_S_tests:-300} \
             bash benchmarks/gpu/gpu_tests.sh > "$OUT/tests_summary.log" 2>&1
           echo "== tests"; cat "$OUT/tests_summary.log" ;;
    mamba_ssm) echo "== mamba_ssm"; mamba_ssm ;;
    kernels) stage kernels ${STAGE_S_kernels:-240} python3 -m benchmarks.kernels \
               ${KERNEL_ARGS:---variant jaxla jla cudnn\ causal mamba_ssm} --out "$OUT" \
               ${BANDWIDTH:+--bandwidth $BANDWIDTH} ;;
    # `python -m` puts the working directory ahead of PYTHONPATH: the earlier commit's packages
    # are found first only when it runs from their folder (benchmarks and anchors from here).
    before) stage before ${STAGE_S_before:-120} env -C .carry/before PYTHONPATH=.:$PWD:$PYTHONPATH \
              python3 -m benchmarks.kernels --packing dense --variant jaxla --label before \
              ${BEFORE_ARGS:-} --out "$OUT" ;;
    script) stage script ${STAGE_S_script:-300} bash -c "$SCRIPT" ;;
    *) echo "unknown stage $name" ;;
  esac
done
save_autotune
[ -n "${mamba_build:-}" ] && kill "$mamba_build" 2>/dev/null  # a build no stage waited for
for name in kernels before script; do
  [ -f "$OUT/$name.log" ] && { echo "== $name"; grep -av "^\[\|Constant folding\|slow_op" \
    "$OUT/$name.log" | tail -40; }
done
