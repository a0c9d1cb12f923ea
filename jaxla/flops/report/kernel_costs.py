"""The Pallas kernels' declared `pl.CostEstimate`s beside `jaxla.flops.kernels`.

Each `KernelCase` traces one op's forward and backward with `implementation="pallas"`
(abstractly: no kernel runs, nothing is allocated) and reads the estimate of every `pallas_call`
in the jaxpr; `formula()` gives `jaxla.flops.kernels`' count of the same kernels.
tests/flops/test_kernel_costs.py holds the two together; the report prints them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.extend as jex
import jax.numpy as jnp

from jaxla import ops
from jaxla.flops import kernels as KF
from jaxla.flops.kernels import KernelCost

S = jax.ShapeDtypeStruct
F32, BF16 = jnp.float32, jnp.bfloat16


def estimates(fn: Callable, *args) -> dict:
    """`{pallas_call name: pl.CostEstimate or None}` of every kernel in the jaxpr of `fn(*args)`.
    """
    found = {}

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "pallas_call":
                name = eqn.params["name"]
                if name in found:
                    raise ValueError(f"two pallas_calls are named {name!r}")
                found[name] = eqn.params["cost_estimate"]
            for value in eqn.params.values():
                for v in value if isinstance(value, (tuple, list)) else (value,):
                    if isinstance(v, jex.core.ClosedJaxpr):
                        walk(v.jaxpr)
                    elif isinstance(v, jex.core.Jaxpr):
                        walk(v)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return found


def forward_backward(op: Callable, *args) -> dict:
    """`estimates` of op's first output and its VJP (the gradient of every input)."""

    def run(*xs):
        out, vjp = jax.vjp(lambda *a: op(*a)[0], *xs)
        return out, vjp(out)

    return estimates(run, *args)


@dataclasses.dataclass(frozen=True)
class KernelCase:
    """One op at one shape: `measure()` -> the kernels' estimates, `formula()` -> their
    `KernelCost`s, both keyed by `pallas_call` name."""

    op: str
    size: str
    measure: Callable[[], dict]
    formula: Callable[[], dict[str, KernelCost]]


def _size(*dims, dtype) -> str:
    return "x".join(map(str, dims)) + f" {jnp.dtype(dtype).name}"


def gla_chunk(B, T, H, K, V, dtype) -> KernelCase:
    from pallas_kernels.gla.config import BlockSizes

    q, v, g = S((B, T, H, K), dtype), S((B, T, H, V), dtype), S((B, T, H, K), F32)
    dims = dict(head_dim_k=K, head_dim_v=V, seq_len=T)
    bs = BlockSizes.get_default(**dims).for_call(**dims)
    kw = dict(chunk=bs.chunk, block_v_state=bs.block_v_state, block_v=bs.block_v, dtype=dtype)
    return KernelCase(
        "gla", _size(B, T, H, K, V, dtype=dtype),
        lambda: forward_backward(lambda *a: ops.gla(*a, implementation="pallas"), q, q, v, g),
        lambda: {**KF.gla_chunk_fwd(B, T, H, K, V, **kw), **KF.gla_chunk_bwd(B, T, H, K, V, **kw)})


def gla_recurrent(B, T, H, K, V, dtype) -> KernelCase:
    from pallas_kernels.gla.config import BlockSizes

    q, v, g = S((B, T, H, K), dtype), S((B, T, H, V), dtype), S((B, T, H, K), F32)
    dims = dict(head_dim_k=K, head_dim_v=V, seq_len=T)
    bv = BlockSizes.get_default(**dims).for_call(**dims).block_v_recurrent
    op = lambda *a: ops.gla_recurrent(*a, implementation="pallas")  # noqa: E731
    return KernelCase(
        "gla_recurrent", _size(B, T, H, K, V, dtype=dtype),
        lambda: forward_backward(op, q, q, v, g),
        lambda: {**KF.gla_recurrent_fwd(B, T, H, K, V, block_v=bv, dtype=dtype),
                 **KF.gla_recurrent_bwd(B, T, H, K, V, block_v=bv, dtype=dtype)})


def simple_gla_chunk(B, T, H, K, V, dtype, gate: str) -> KernelCase:
    """gate "g": `simple_gla` with per-step gates (and their gradient); "gamma":
    `lightning_attention` (a constant decay per head)."""
    from pallas_kernels.simple_gla.config import BlockSizes

    q, v = S((B, T, H, K), dtype), S((B, T, H, V), dtype)
    if gate == "g":
        name, args = "simple_gla", (q, q, v, S((B, T, H), F32))
        op = lambda *a: ops.simple_gla(*a, implementation="pallas")  # noqa: E731
    else:
        name, args = "lightning_attention", (q, q, v)
        op = lambda *a: ops.lightning_attention(  # noqa: E731
            *a, layer_idx=3, num_layers=24, implementation="pallas")
    dims = dict(head_dim_k=K, head_dim_v=V, dtype=dtype)
    bs = BlockSizes.get_default(**dims).for_call(**dims)
    kw = dict(chunk=bs.chunk, dtype=dtype, gate_mode=gate, initial_state=False)
    return KernelCase(
        name, _size(B, T, H, K, V, dtype=dtype), lambda: forward_backward(op, *args),
        lambda: {**KF.simple_gla_chunk_fwd(B, T, H, K, V, block_v=bs.block_v, **kw),
                 **KF.simple_gla_chunk_bwd(B, T, H, K, V, block_k_dq=bs.block_k_dq,
                                           block_k_dk=bs.block_k_dk, block_v_dv=bs.block_v_dv,
                                           gate_grad=gate == "g", final_state_grad=False,
                                           **kw)})


def simple_gla_recurrent(B, T, H, K, V, dtype) -> KernelCase:
    """The forward only: the recurrent form's backward runs the chunked backward kernels."""
    from pallas_kernels.simple_gla.config import BlockSizes

    q, v = S((B, T, H, K), dtype), S((B, T, H, V), dtype)
    op = lambda *a: ops.simple_gla_recurrent(*a, implementation="pallas")[0]  # noqa: E731
    dims = dict(head_dim_k=K, head_dim_v=V, dtype=dtype)
    bv = min(BlockSizes.get_default(**dims).for_call(**dims).block_v_recurrent, V)
    return KernelCase(
        "simple_gla_recurrent (fwd)", _size(B, T, H, K, V, dtype=dtype),
        lambda: estimates(op, q, q, v, S((B, T, H), F32)),
        lambda: KF.simple_gla_recurrent_fwd(B, T, H, K, V, block_v=bv, dtype=dtype,
                                            gate_mode="g", initial_state=False))


def selective_scan(B, T, D, N, dtype) -> KernelCase:
    """Mamba's layer: D skip, z gate, delta_bias and softplus."""
    from pallas_kernels.selective_scan.config import BlockSizes

    u, A, Bm, Dv = S((B, T, D), dtype), S((D, N), F32), S((B, T, N), dtype), S((D,), F32)

    def op(u, delta, A, Bm, Cm, Dv, z, bias):
        return ops.selective_scan(u, delta, A, Bm, Cm, Dv, z, delta_bias=bias,
                                  delta_softplus=True, implementation="pallas")

    dims = dict(state_size=N, batch=B, seq_len=T, channels=D)
    bs = BlockSizes.get_default(**dims).for_call(**dims)
    return KernelCase(
        "selective_scan", _size(B, T, D, N, dtype=dtype),
        lambda: forward_backward(op, u, u, A, Bm, Bm, Dv, u, Dv),
        lambda: {**KF.selective_scan_fwd(B, T, D, N, chunk=bs.chunk, dtype=dtype, save=True,
                                         checkpoint=bs.checkpoint),
                 **KF.selective_scan_bwd(B, T, D, N, chunk=bs.chunk_bwd,
                                         checkpoint=bs.checkpoint, sub=bs.sub, dtype=dtype,
                                         n_blocks=D // bs.block_d_bwd)})


def benchmark_cases() -> list[KernelCase]:
    """The shapes of benchmarks/RESULTS.md: B=4 T=4096 H=16 K=V=128 bf16 (recurrent forms: T=256,
    64) and the Mamba-370M layer (D=2048, N=16)."""
    return [
        gla_chunk(4, 4096, 16, 128, 128, BF16),
        gla_recurrent(4, 256, 16, 128, 128, BF16),
        simple_gla_chunk(4, 4096, 16, 128, 128, BF16, "g"),
        simple_gla_chunk(4, 4096, 16, 128, 128, BF16, "gamma"),
        simple_gla_recurrent(4, 64, 16, 128, 128, BF16),
        selective_scan(4, 4096, 2048, 16, BF16),
    ]


def other_cases() -> list[KernelCase]:
    """float32, V tiles (GLA's block_v of 128 at V = 256), T not a multiple of the chunks."""
    return [
        gla_chunk(2, 1024, 4, 64, 256, F32),
        gla_recurrent(2, 100, 4, 64, 256, F32),
        simple_gla_chunk(2, 1024, 4, 64, 256, F32, "g"),
        simple_gla_chunk(2, 1024, 4, 64, 256, F32, "gamma"),
        simple_gla_recurrent(2, 100, 4, 64, 256, F32),
        selective_scan(2, 1000, 512, 16, F32),
    ]
