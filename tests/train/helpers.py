"""A small text corpus, the command line of a tiny, fast run, and a compilation cache."""

import contextlib
import os
from pathlib import Path

import jax
import numpy as np
from jax._src import compilation_cache

from train.config import parse_args


def corpus(tmp_path: Path, rng) -> Path:
    """A folder of 40 text documents, 60 kB in all, with structure to learn (repeated words)
    and noise; as a folder it trains on packed documents (one per file). Every document has at
    least 300 bytes: the validation split is one file (`doc10.txt`, by its path's hash), which
    must outlast `seq_len + 1` of every test (a free cut once left it 24 bytes)."""
    words = [bytes(rng.integers(97, 123, int(rng.integers(2, 8))).astype(np.uint8)).decode()
             for _ in range(50)]
    text = " ".join(words[int(i)] for i in rng.integers(0, 50, 12_000))[:60_000]
    folder = tmp_path / "corpus"
    folder.mkdir()
    slots = np.arange(1, len(text) // 300)
    cuts = 300 * np.sort(rng.choice(slots, 39, replace=False))
    for i, (start, end) in enumerate(zip([0, *cuts], [*cuts, len(text)], strict=True)):
        (folder / f"doc{i:02d}.txt").write_text(text[start:end])
    return folder


def tiny_args(run_dir: Path, data_path: Path, *extra: str) -> list[str]:
    return ["--preset", "tiny_gla", "--data", "text", "--data_path", str(data_path),
            "--run_dir", str(run_dir), "--batch_size", "8", "--seq_len", "32",
            "--eval_batches", "2", "--num_devices", "1", "--progress", "off", "--log_every", "1",
            "--lr", "3e-3", "--warmup_steps", "2", *extra]


def tiny_config(run_dir: Path, data_path: Path, *extra: str):
    return parse_args(tiny_args(run_dir, data_path, *extra), backend="cpu")


@contextlib.contextmanager
def compile_cache(directory):
    """JAX's persistent compilation cache in `directory` while inside: a test that runs the same
    tiny model many times compiles it once (a cached executable is the same program, so the
    runs' numbers do not change). Subprocesses inherit it through the environment."""
    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes")
    before = {n: getattr(jax.config, n) for n in names}
    env_before = {k: os.environ.get(k) for k in ("JAX_COMPILATION_CACHE_DIR",
                                                 "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")}
    for name, value in zip(names, (str(directory), 0, 0), strict=True):
        jax.config.update(name, value)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(directory)
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    compilation_cache.reset_cache()  # it decides once per process whether it is in use
    try:
        yield
    finally:
        for name, value in before.items():
            jax.config.update(name, value)
        for key, value in env_before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        compilation_cache.reset_cache()
