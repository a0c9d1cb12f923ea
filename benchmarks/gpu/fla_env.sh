# Sourced by the GPU scripts: the anchors' wheels (FLA, jax-linear-attention) on PYTHONPATH and
# FLA's Triton autotuning results carried between calls. The wheels lie under .carry/anchors
# (../shared/tools/get-anchor-wheels.sh .carry/anchors); FLA's tuning (minutes on a fresh machine:
# FLA caches results in Triton's cache as small *.autotune.json files) is restored from
# .carry/triton_autotune.tgz when present, and `save_autotune` writes it to $OUT to carry next time.
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .carry/anchors/*.whl \
  >/dev/null 2>&1 || echo "anchor wheels not installed (none under .carry/anchors?)"
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=/tmp/triton_cache
mkdir -p "$TRITON_CACHE_DIR"
[ -f .carry/triton_autotune.tgz ] && tar xzf .carry/triton_autotune.tgz -C "$TRITON_CACHE_DIR"
save_autotune() {
  (cd "$TRITON_CACHE_DIR" && find . -name '*.autotune.json' | tar czf "$OUT/triton_autotune.tgz" -T -)
}
