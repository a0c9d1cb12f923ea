# Sourced by the GPU scripts: FLA on PYTHONPATH and FLA's Triton autotuning results carried
# between calls. FLA's wheel lies under .carry/fla; its tuning (minutes on a fresh machine, as
# FLA caches results in Triton's cache as small *.autotune.json files) is restored from
# .carry/triton_autotune.tgz when present, and `save_autotune` writes it to $OUT to carry next time.
mkdir -p /tmp/fla
python3 -c "import glob, zipfile; [zipfile.ZipFile(w).extractall('/tmp/fla') for w in glob.glob('.carry/fla/*.whl')]"
export PYTHONPATH=/tmp/fla:. PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=/tmp/triton_cache
mkdir -p "$TRITON_CACHE_DIR"
[ -f .carry/triton_autotune.tgz ] && tar xzf .carry/triton_autotune.tgz -C "$TRITON_CACHE_DIR"
save_autotune() {
  (cd "$TRITON_CACHE_DIR" && find . -name '*.autotune.json' | tar czf "$OUT/triton_autotune.tgz" -T -)
}
