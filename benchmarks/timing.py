"""Timing and memory measurement shared by the benchmarks (GPU only for numbers that matter).

JAX: median wall time of a jitted function after warm-up, each call ended by `block_until_ready`.
PyTorch: `triton.testing.do_bench` (CUDA events), median. Peak memory: XLA's compiled memory
analysis for JAX (arguments + outputs + temporaries of the program), `max_memory_allocated` after
a reset for PyTorch.
"""

from __future__ import annotations

import statistics
import sys
import time

import jax

# Measured on an H100 80GB HBM3, 2026-11-24 (shared anchors.md): a device-to-device copy and a
# 4096^3 bf16 matmul through XLA.
H100_HBM_BYTES_PER_S = 3.0e12
H100_BF16_MATMUL_FLOPS = 470e12


def time_jax(fn, *args, warmup: int = 3, iters: int = 30) -> float:
    """Median milliseconds of `fn(*args)` (fn should be jitted)."""
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def time_jax_pipelined(fn, *args, calls: int = 50) -> float:
    """Mean milliseconds per call of `calls` back-to-back calls, synchronised once at the end.

    With no host round trip between calls the GPU runs them back to back, as it does for
    `triton.testing.do_bench` (events around each call, no host sync between them): the fair
    number to set beside a PyTorch time. `time_jax` adds each call's dispatch and sync latency.
    """
    jax.block_until_ready(fn(*args))
    start = time.perf_counter()
    for _ in range(calls):
        out = fn(*args)
    jax.block_until_ready(out)
    return 1e3 * (time.perf_counter() - start) / calls


def jax_peak_bytes(fn, *args) -> int | None:
    """Arguments + outputs + temporaries of the compiled program (None when XLA does not say)."""
    try:
        m = jax.jit(fn).lower(*args).compile().memory_analysis()
    except Exception:  # noqa: BLE001 - some backends have no memory analysis
        return None
    if m is None:
        return None
    total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
    return int(total - getattr(m, "alias_size_in_bytes", 0))


def time_torch(fn, warmup_ms: int = 25, rep_ms: int = 100) -> float:
    """Median milliseconds of a PyTorch callable via `triton.testing.do_bench`."""
    from triton.testing import do_bench

    result = do_bench(fn, warmup=warmup_ms, rep=rep_ms, quantiles=[0.5])
    return float(result[0] if isinstance(result, (list, tuple)) else result)


def torch_peak_bytes(fn) -> int:
    """Peak bytes PyTorch allocated while running `fn` once."""
    import torch

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return int(torch.cuda.max_memory_allocated())


def floor_ms(bytes_moved: float, flops: float = 0.0) -> float:
    """The larger of memory time and matmul time at the measured H100 ceilings, in ms."""
    return 1e3 * max(bytes_moved / H100_HBM_BYTES_PER_S, flops / H100_BF16_MATMUL_FLOPS)


def report_row(op: str, T: int, row: dict, started: float) -> dict:
    """Print one measured row at once (stderr), so a run cut short still shows it; returns it."""
    ms = f"{row['ms']:.3f} ms" if row.get("ms") is not None else f"failed ({row.get('error')})"
    print(f"[{op}] T={T} {row['impl']} {row['mode']}: {ms} "
          f"[{time.perf_counter() - started:.0f} s incl. compile]", file=sys.stderr, flush=True)
    return row
