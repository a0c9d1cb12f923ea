"""The kernel benchmarks' one registry: ops, shapes and the implementations timed side by side.

Every implementation of an op gets the same inputs (made once per case) and is timed the same
way by the runner (`python -m benchmarks.kernels`). An implementation is a `Variant`: a name and
`build(inputs, packed) -> fn | str`, where `fn(*diff_args)` returns the op's output and `diff_args`
are the inputs the fwd+bwd mode differentiates; a string says why the variant cannot run this
case (a missing package, a shape it does not take) and becomes the row's message.

Anchors: jax-linear-attention (`jla`, JAX + Mosaic GPU), FLA (PyTorch + Triton, timed by the
runner with `triton.testing.do_bench`) and cuDNN's causal flash attention through
`jax.nn.dot_product_attention`. Nothing here holds a number measured elsewhere.

Packed cases: every row holds `DOCUMENTS_PER_ROW` documents of random lengths (`segment_ids`);
FLA takes packed documents only as `cu_seqlens` in one row, so it is left out of them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxla import ops

DOCUMENTS_PER_ROW = 16


@dataclasses.dataclass(frozen=True)
class Shape:
    name: str
    dims: dict  # the op's dims: B, T, H, K, V (attention) or B, T, D, N (scan)

    def label(self) -> str:
        return self.name + " " + " ".join(f"{k}{v}" for k, v in self.dims.items())


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    build: Callable  # (inputs: dict, packed: bool) -> fn | str
    torch: bool = False  # timed with do_bench on torch tensors


@dataclasses.dataclass(frozen=True)
class OpBench:
    shapes: tuple[Shape, ...]
    make: Callable  # (shape dims, packed, seed) -> inputs dict
    variants: tuple[Variant, ...]
    bytes_moved: Callable  # (dims, mode) -> bytes each input read once, each output written once


def segment_ids(B: int, T: int, docs: int, seed: int) -> jax.Array:
    """`[B, T]` ids of `docs` documents per row with random lengths (each at least 1)."""
    rng = np.random.default_rng(seed)
    ids = np.empty((B, T), np.int32)
    for b in range(B):
        cuts = np.sort(rng.choice(np.arange(1, T), docs - 1, replace=False))
        ids[b] = np.searchsorted(cuts, np.arange(T), side="right")
    return jnp.asarray(ids)


# --- linear attention: GLA, simple GLA, Lightning ------------------------------------------------


def _attention_inputs(dims, packed, seed, gate):
    B, T, H, K, V = (dims[k] for k in "BTHKV")
    keys = jax.random.split(jax.random.key(seed), 5)
    q, k = (jax.random.normal(key, (B, T, H, K), jnp.bfloat16) for key in keys[:2])
    v = jax.random.normal(keys[2], (B, T, H, V), jnp.bfloat16)
    x = {"q": q, "k": k, "v": v}
    if gate == "gla":
        x["g"] = jax.nn.log_sigmoid(jax.random.normal(keys[3], (B, T, H, K), jnp.float32)) / 16
    x["segment_ids"] = segment_ids(B, T, DOCUMENTS_PER_ROW, seed) if packed else None
    return x


def _try_jla():
    try:
        from jla import ops as jla_ops
    except Exception as e:  # noqa: BLE001
        return None, f"jla unavailable ({type(e).__name__}: {e})"
    return jla_ops, None


def _packing(x):
    """The packing keyword, only when packed (so a dense case also runs older jaxla versions)."""
    return {} if x["segment_ids"] is None else {"segment_ids": x["segment_ids"]}


def _jaxla_gla(impl):
    def build(x, packed):
        kw = _packing(x)
        return lambda q, k, v, g: ops.gla(q, k, v, g, implementation=impl, **kw)[0]
    return build


def _jla_gla(x, packed):
    jla_ops, why = _try_jla()
    if jla_ops is None:
        return why
    seg = x["segment_ids"]
    return lambda q, k, v, g: jla_ops.linear_attention(
        "gla", q, k, v, g=g, segment_ids=seg, impl="mosaic_gpu")[0]


def _fla_gla(x, packed):
    if packed:
        return "FLA takes packed documents as cu_seqlens in one row only"
    try:
        from fla.ops.gla import chunk_gla
    except Exception as e:  # noqa: BLE001
        return f"FLA unavailable ({type(e).__name__})"
    return lambda q, k, v, g: chunk_gla(q, k, v, g)[0]


def _cudnn(x, packed):
    if packed:
        return "dense attention only"
    return lambda q, k, v, *_: jax.nn.dot_product_attention(q, k, v, is_causal=True,
                                                            implementation="cudnn")


# Lightning with FLA's decays for layer 2 of 12: the constant per-head decay of simple GLA.
LIGHTNING_LAYER = dict(layer_idx=2, num_layers=12, decay="fla")


def _jaxla_lightning(impl):
    def build(x, packed):
        kw = _packing(x)
        return lambda q, k, v: ops.lightning_attention(q, k, v, implementation=impl,
                                                       **LIGHTNING_LAYER, **kw)[0]
    return build


def _lightning_gate(q):
    g_gamma = ops.lightning_decay(q.shape[2], **LIGHTNING_LAYER)
    return jnp.broadcast_to(jnp.asarray(g_gamma), q.shape[:3])


def _jla_lightning(x, packed):
    jla_ops, why = _try_jla()
    if jla_ops is None:
        return why
    seg = x["segment_ids"]
    return lambda q, k, v: jla_ops.linear_attention(
        "simple_gla", q, k, v, g=_lightning_gate(q), segment_ids=seg, impl="mosaic_gpu")[0]


def _fla_lightning(x, packed):
    if packed:
        return "FLA takes packed documents as cu_seqlens in one row only"
    try:
        from fla.ops.simple_gla import chunk_simple_gla
    except Exception as e:  # noqa: BLE001
        return f"FLA unavailable ({type(e).__name__})"

    def fn(q, k, v):
        import torch

        g_gamma = ops.lightning_decay(q.shape[2], **LIGHTNING_LAYER)
        return chunk_simple_gla(q, k, v, g_gamma=torch.tensor(np.asarray(g_gamma)).cuda())[0]

    return fn


def _attention_bytes(dims, mode, gate):
    B, T, H, K, V = (dims[k] for k in "BTHKV")
    inputs = B * T * H * (2 * K + V) * 2 + (B * T * H * K * 4 if gate else 0)
    output = B * T * H * V * 2
    if mode == "fwd":
        return inputs + output
    return 2 * (inputs + output) + inputs + output  # fwd, then read inputs and do, write grads


# --- selective scan ----------------------------------------------------------------------------


def _scan_inputs(dims, packed, seed):
    """A Mamba layer's scan (mamba_simple init): bf16 u, delta, z, B, C; float32 A, D, bias."""
    B, T, D, N = (dims[k] for k in "BTDN")
    rng = np.random.default_rng(seed)
    bf16 = lambda a: jnp.asarray(a, jnp.bfloat16)  # noqa: E731
    dt = np.exp(rng.uniform(np.log(1e-3), np.log(0.1), D))
    return {
        "u": bf16(rng.standard_normal((B, T, D))),
        "delta": bf16(0.1 * rng.standard_normal((B, T, D))),
        "A": -jnp.tile(jnp.arange(1, N + 1, dtype=jnp.float32), (D, 1)),
        "B": bf16(rng.standard_normal((B, T, N))),
        "C": bf16(rng.standard_normal((B, T, N))),
        "D": jnp.ones((D,), jnp.float32),
        "z": bf16(rng.standard_normal((B, T, D))),
        "delta_bias": jnp.asarray(dt + np.log(-np.expm1(-dt)), jnp.float32),
        "segment_ids": segment_ids(B, T, DOCUMENTS_PER_ROW, seed) if packed else None,
    }


def _jaxla_scan(impl):
    def build(x, packed):
        kw = _packing(x)
        return lambda u, delta, A, Bm, Cm, D, z, bias: ops.selective_scan(
            u, delta, A, Bm, Cm, D, z, delta_bias=bias, delta_softplus=True,
            implementation=impl, **kw)[0]
    return build


def _jla_scan(x, packed):
    jla_ops, why = _try_jla()
    if jla_ops is None:
        return why
    seg = x["segment_ids"]
    return lambda u, delta, A, Bm, Cm, D, z, bias: jla_ops.linear_attention(
        "mamba1", Cm, Bm, u, dt=delta, a=A, d=D, z=z, dt_bias=bias, dt_softplus=True,
        segment_ids=seg, impl="mosaic_gpu")[0]


def _scan_bytes(dims, mode):
    B, T, D, N = (dims[k] for k in "BTDN")
    inputs = B * T * (3 * D + 2 * N) * 2
    output = B * T * D * 2
    return inputs + output if mode == "fwd" else 3 * (inputs + output)


ATTENTION = dict(B=4, T=4096, H=16, K=128, V=128)
OPS: dict[str, OpBench] = {
    "gla": OpBench(
        shapes=(Shape("anchor", ATTENTION), Shape("long", dict(B=1, T=16384, H=16, K=128, V=128)),
                Shape("fla-340m", dict(B=8, T=2048, H=4, K=128, V=256))),
        make=lambda dims, packed, seed: _attention_inputs(dims, packed, seed, "gla"),
        variants=(Variant("jaxla", _jaxla_gla("pallas")), Variant("jla", _jla_gla),
                  Variant("fla", _fla_gla, torch=True), Variant("cudnn causal", _cudnn),
                  Variant("jaxla xla", _jaxla_gla("xla"))),
        bytes_moved=lambda dims, mode: _attention_bytes(dims, mode, True),
    ),
    "lightning": OpBench(
        shapes=(Shape("anchor", ATTENTION),),
        make=lambda dims, packed, seed: _attention_inputs(dims, packed, seed, None),
        variants=(Variant("jaxla", _jaxla_lightning("pallas")), Variant("jla", _jla_lightning),
                  Variant("fla", _fla_lightning, torch=True),
                  Variant("jaxla xla", _jaxla_lightning("xla"))),
        bytes_moved=lambda dims, mode: _attention_bytes(dims, mode, False),
    ),
    "selective_scan": OpBench(
        shapes=(Shape("mamba-370m", dict(B=4, T=4096, D=2048, N=16)),
                Shape("mamba-370m-b8", dict(B=8, T=2048, D=2048, N=16))),
        make=_scan_inputs,
        variants=(Variant("jaxla", _jaxla_scan("pallas")), Variant("jla", _jla_scan),
                  Variant("jaxla xla", _jaxla_scan("xla"))),
        bytes_moved=_scan_bytes,
    ),
}

# The inputs each op differentiates, in the order its variants' functions take them.
DIFF_ARGS = {
    "gla": ("q", "k", "v", "g"),
    "lightning": ("q", "k", "v"),
    "selective_scan": ("u", "delta", "A", "B", "C", "D", "z", "delta_bias"),
}
