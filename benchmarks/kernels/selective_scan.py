"""Selective scan benchmark: a Mamba-370M layer (B=4, D=2048, N=16) at T in {1024, ..., 8192}.

Rows (one per implementation and mode, see `benchmarks/kernels/__main__.py`):
- "pallas": `jaxla.ops.selective_scan(implementation="pallas")` (the kernels, default blocks).
- "xla": jaxla's chunked associative-scan path (`implementation="xla"`).
- "xla associative_scan": one `lax.associative_scan` over `[B, T, D, N]` in plain jnp, the XLA
  reference of shared anchors.md (so ratios line up with the anchor table).
- "mamba_ssm (anchors.md, not measured)": mamba_ssm's CUDA `selective_scan_fn` as measured on an
  H100 on 2026-11-24 (anchors.md); its `ms` is copied, not measured in this run.

Inputs: bf16 u, delta, z, B, C ([B, T, N], shared by all channels); float32 A (= -(1..N) per
channel, Mamba's init), D and delta_bias (Mamba's dt init); with z gate, D skip, delta_bias and
softplus. "fwd+bwd" is the gradient of `sum(out)` with respect to all eight inputs.

Each row has `ms`, `peak_gib` (XLA's memory analysis of the compiled program: arguments,
outputs and temporaries) and `floor_ms`, the time to move the bytes that must move at 3.0 TB/s:
fwd reads u, delta, z, B, C once and writes out (bf16); fwd+bwd adds reading u, delta, z, B, C
and d out again and writing du, d delta, dz, dB, dC (the small A/D/bias terms are ignored).
Pallas rows carry `error` (largest relative error of the output and gradients against the xla
path), `anchor_ms` (mamba_ssm), `vs_mamba_ssm` (anchor / ms: > 1 means faster than mamba_ssm)
and `vs_xla_associative_scan` (speed-up over the XLA reference measured in the same run).
"""

from __future__ import annotations

import gc
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.timing import floor_ms, jax_peak_bytes, report_row, time_jax
from jaxla import ops
from jaxla.testing import rel_error
from pallas_kernels.selective_scan import BlockSizes, selective_scan

DEFAULT_T = (1024, 2048, 4096, 8192)
BATCH, DIM, STATE = 4, 2048, 16

# anchors.md, "Mamba selective scan, same H100, same day": T -> (fwd ms, fwd+bwd ms).
MAMBA_SSM_MS = {1024: (0.159, 0.774), 2048: (0.309, 1.559), 4096: (0.606, 3.046),
                8192: (1.392, 6.320)}
XLA_REF_ANCHOR_MS = {1024: (1.668, 8.006), 4096: (4.483, 34.552)}
MAMBA_SSM = "mamba_ssm (anchors.md, not measured)"


def inputs(T: int, seed: int = 0):
    """u, delta, A, B, C, D, z, delta_bias of a Mamba-370M layer (mamba_simple defaults)."""
    rng = np.random.default_rng(seed)
    bf16 = lambda x: jnp.asarray(x, jnp.bfloat16)  # noqa: E731
    u = bf16(rng.standard_normal((BATCH, T, DIM)))
    z = bf16(rng.standard_normal((BATCH, T, DIM)))
    delta = bf16(0.1 * rng.standard_normal((BATCH, T, DIM)))  # dt_proj output, bias added later
    Bm = bf16(rng.standard_normal((BATCH, T, STATE)))
    Cm = bf16(rng.standard_normal((BATCH, T, STATE)))
    A = -jnp.tile(jnp.arange(1, STATE + 1, dtype=jnp.float32), (DIM, 1))
    D = jnp.ones((DIM,), jnp.float32)
    dt = np.exp(rng.uniform(np.log(1e-3), np.log(0.1), DIM))
    delta_bias = jnp.asarray(dt + np.log(-np.expm1(-dt)), jnp.float32)  # inverse softplus
    return u, delta, A, Bm, Cm, D, z, delta_bias


def associative_scan_reference(u, delta, A, B, C, D, z, delta_bias):
    """The anchor's XLA reference: materialise `[B, T, D, N]` and run one associative scan."""
    f32 = jnp.float32
    dt = jax.nn.softplus(delta.astype(f32) + delta_bias)
    a = jnp.exp(dt[..., None] * A)
    b = (dt * u.astype(f32))[..., None] * B.astype(f32)[:, :, None, :]

    def combine(left, right):
        return left[0] * right[0], right[0] * left[1] + right[1]

    _, h = jax.lax.associative_scan(combine, (a, b), axis=1)
    y = jnp.einsum("btdn,btn->btd", h, C.astype(f32)) + D * u.astype(f32)
    return (y * jax.nn.silu(z.astype(f32))).astype(u.dtype)


def _op(implementation):
    def fn(u, delta, A, B, C, D, z, delta_bias):
        out, _ = ops.selective_scan(u, delta, A, B, C, D, z, delta_bias=delta_bias,
                                    delta_softplus=True, implementation=implementation)
        return out
    return fn


def block_sizes(T: int, fields: dict) -> BlockSizes:
    """The op's default blocks for this layer at T (`get_default(shape=...)`), `fields` over them."""
    return BlockSizes.get_default(STATE, shape=(BATCH, T, DIM), **fields)


def kernel_op(block_sizes):
    """The Pallas kernels on `block_sizes` (a `BlockSizes`), called directly (no op checks)."""
    def fn(u, delta, A, B, C, D, z, delta_bias):
        out, _ = selective_scan(u, delta, A, B, C, D, z, delta_bias=delta_bias,
                                delta_softplus=True, block_sizes=block_sizes)
        return out
    return fn


IMPLS = {
    "pallas": _op("pallas"),
    "xla": _op("xla"),
    "xla associative_scan": associative_scan_reference,
}


def grads_of_sum(fn):
    """The gradient of `sum(fn(...))` with respect to all eight inputs."""
    def loss(*args):
        return jnp.sum(fn(*args).astype(jnp.float32))
    return jax.grad(loss, argnums=tuple(range(8)))


def floor(T: int, mode: str) -> float:
    big = BATCH * T * DIM * 2  # one bf16 [B, T, D] tensor
    small = BATCH * T * STATE * 2  # one bf16 [B, T, N] tensor
    fwd = 4 * big + 2 * small  # u, delta, z, B, C read; out written
    if mode == "fwd":
        return floor_ms(fwd)
    # + u, delta, z, B, C, d out read again; du, d delta, dz, dB, dC written
    return floor_ms(fwd + 7 * big + 4 * small)


def _measure(fn, args, slow: bool):
    """(median ms, peak GiB, jitted fn)."""
    jitted = jax.jit(fn)
    ms = time_jax(jitted, *args, warmup=2 if slow else 3, iters=10 if slow else 30)
    peak = jax_peak_bytes(fn, *args)
    return ms, (None if peak is None else peak / 2**30), jitted


def rows(T: int, modes):
    args = inputs(T)
    out = []
    results = {}
    for mode in modes:
        for impl, fn in IMPLS.items():
            f = fn if mode == "fwd" else grads_of_sum(fn)
            row = {"impl": impl, "mode": mode, "floor_ms": floor(T, mode)}
            started = time.perf_counter()
            try:
                row["ms"], row["peak_gib"], jitted = _measure(f, args, slow=impl != "pallas")
                if impl in ("pallas", "xla"):
                    results[impl] = jitted(*args)
            except Exception as e:  # noqa: BLE001 - keep going (OOM at large T, compile errors)
                row["ms"] = None
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
                traceback.print_exc()
            out.append(report_row("selective_scan", T, row, started))
            gc.collect()
        fwd_bwd = mode != "fwd"
        anchor = MAMBA_SSM_MS.get(T)
        if anchor is not None:
            out.append({"impl": MAMBA_SSM, "mode": mode, "ms": anchor[fwd_bwd],
                        "floor_ms": floor(T, mode), "measured": False})
        pallas = next(r for r in out if r["impl"] == "pallas" and r["mode"] == mode)
        if pallas.get("ms"):
            if anchor is not None:
                pallas["anchor_ms"] = anchor[fwd_bwd]
                pallas["vs_mamba_ssm"] = anchor[fwd_bwd] / pallas["ms"]
            for other in ("xla", "xla associative_scan"):
                ref = next(r for r in out if r["impl"] == other and r["mode"] == mode)
                if ref.get("ms"):
                    pallas["vs_" + other.replace(" ", "_")] = ref["ms"] / pallas["ms"]
            if T in XLA_REF_ANCHOR_MS:
                pallas["xla_associative_scan_anchor_ms"] = XLA_REF_ANCHOR_MS[T][fwd_bwd]
            if "xla" in results and "pallas" in results:
                got, want = jax.tree.leaves(results["pallas"]), jax.tree.leaves(results["xla"])
                pallas["error"] = max(rel_error(a, b) for a, b in zip(got, want, strict=True))
        results.clear()
    for r in out:
        if r["impl"] == "pallas" and r.get("ms"):
            extra = ", ".join(f"{k}={r[k]:.3g}" for k in
                              ("vs_mamba_ssm", "vs_xla", "vs_xla_associative_scan", "error")
                              if isinstance(r.get(k), float))
            print(f"[selective_scan] T={T} {r['mode']}: pallas {r['ms']:.3f} ms "
                  f"(floor {r['floor_ms']:.3f} ms) {extra}", flush=True)
    return out
