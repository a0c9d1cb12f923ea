"""The kernel benchmarks' one registry: ops, shapes and the implementations timed side by side.

Every implementation of an op gets the same inputs (made once per case) and is timed the same
way by the runner (`python -m benchmarks.kernels`). An implementation is a `Variant`: a name and
`build(inputs, packed) -> fn | str`, where `fn(*diff_args)` returns the op's output and `diff_args`
are the inputs the fwd+bwd mode differentiates; a string says why the variant cannot run this
case (a missing package, a shape or a packing it does not take) and becomes the row's message.

Anchors: jax-linear-attention (`jla`, JAX + Mosaic GPU), FLA (PyTorch + Triton), mamba_ssm's
CUDA selective scan (PyTorch; built on the GPU machine by `benchmarks/gpu/mamba_ssm_ref.py`) and
cuDNN's causal flash attention through `jax.nn.dot_product_attention`. The PyTorch ones are timed
by the runner with `triton.testing.do_bench`. A variant whose package does not import says so in
its row. Nothing here holds a number measured elsewhere.

Packed cases: every row holds `DOCUMENTS_PER_ROW` documents of random lengths (`segment_ids`).
FLA takes packed documents as `cu_seqlens` with B = 1, so its variants flatten the rows into one
(a view) and pass the offsets of every document (`cu_seqlens_of`). mamba_ssm has no packed
Mamba-1 kernel: its packed rows say so.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
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
    """One implementation of an op.

    torch: timed with `do_bench` on torch copies of the inputs (the runner makes them).
    torch_layout: for a torch variant whose layout differs from the registry's: a function of one
      tensor that is its own inverse (an axis swap). The runner applies it, outside the timing,
      to the inputs and the cotangent, and again to the output and the gradients it compares.
    """

    name: str
    build: Callable  # (inputs: dict, packed: bool) -> fn | str
    torch: bool = False
    torch_layout: Callable | None = None


@dataclasses.dataclass(frozen=True)
class OpBench:
    shapes: tuple[Shape, ...]
    make: Callable  # (shape dims, packed, seed) -> inputs dict
    variants: tuple[Variant, ...]
    bytes_moved: Callable  # (dims, mode) -> bytes each input read once, each output written once


def segment_ids(B: int, T: int, docs: int, seed: int) -> jax.Array:
    """`[B, T]` ids of `docs` documents per row with random lengths (each at least 1)."""
    if not 1 <= docs <= T:
        raise ValueError(f"{docs} documents per row need 1 <= docs <= T, got {T=}")
    rng = np.random.default_rng(seed)
    ids = np.empty((B, T), np.int32)
    for b in range(B):
        cuts = np.sort(rng.choice(np.arange(1, T), docs - 1, replace=False))
        ids[b] = np.searchsorted(cuts, np.arange(T), side="right")
    return jnp.asarray(ids)


def cu_seqlens_of(segment_ids) -> np.ndarray:
    """FLA's `cu_seqlens` for `[B, T]` segment ids with the rows flattened into one (B = 1).

    int64 `[N + 1]`: the offset of every document start (each row's start included) in the
    flattened `B * T` positions, then `B * T`.
    """
    ids = np.asarray(segment_ids)
    B, T = ids.shape
    starts = np.ones((B, T), bool)
    starts[:, 1:] = ids[:, 1:] != ids[:, :-1]
    return np.append(np.flatnonzero(starts), B * T).astype(np.int64)


def shape_named(op: str, name: str) -> Shape:
    """The registered shape `name` of `op`."""
    shapes = {s.name: s for s in OPS[op].shapes}
    if name not in shapes:
        raise ValueError(f"op {op!r} has no shape {name!r}; it has {sorted(shapes)}")
    return shapes[name]


def dims_item(text: str) -> tuple[str, int]:
    """`"T=256"` -> `("T", 256)`: the argparse `type=` of options that override a shape's dims."""
    key, sep, value = text.partition("=")
    if not sep or not key or not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected NAME=INT with INT >= 1, got {text!r}")
    return key, int(value)


def case_inputs(op: str, shape: str, *, packed: bool = False, seed: int = 0, dims=()):
    """`(dims, inputs)` of a registered case, for tools outside the runner (tuning, profiling).

    dims: `(name, value)` pairs over the shape's dims (a smaller case for a CPU check); a name
    the shape does not have is a ValueError.
    """
    full = dict(shape_named(op, shape).dims)
    for key, value in dims:
        if key not in full:
            raise ValueError(f"shape {shape!r} of {op!r} has dims {list(full)}, got {key}={value}")
        full[key] = value
    return full, OPS[op].make(full, packed, seed)


# --- linear attention: GLA, simple GLA, Lightning ------------------------------------------------


def _attention_inputs(dims, packed, seed, gate):
    """bf16 q, k, v ~ randn; gates float32 logsigmoid(randn) / 16: `[B, T, H, K]` for "gla",
    `[B, T, H]` for "simple_gla", none for None (Lightning's constant decay)."""
    B, T, H, K, V = (dims[k] for k in "BTHKV")
    keys = jax.random.split(jax.random.key(seed), 5)
    q, k = (jax.random.normal(key, (B, T, H, K), jnp.bfloat16) for key in keys[:2])
    v = jax.random.normal(keys[2], (B, T, H, V), jnp.bfloat16)
    x = {"q": q, "k": k, "v": v}
    if gate is not None:
        shape = (B, T, H, K) if gate == "gla" else (B, T, H)
        x["g"] = jax.nn.log_sigmoid(jax.random.normal(keys[3], shape, jnp.float32)) / 16
    x["segment_ids"] = segment_ids(B, T, DOCUMENTS_PER_ROW, seed) if packed else None
    return x


def _try_jla():
    try:
        from jla import ops as jla_ops
    except Exception as e:  # noqa: BLE001
        return None, f"jla unavailable ({type(e).__name__}: {e})"
    return jla_ops, None


def _try_fla(module: str, name: str):
    """`(fla.ops.<module>.<name>, None)`, or `(None, why)` where FLA does not import."""
    try:
        return getattr(importlib.import_module(f"fla.ops.{module}"), name), None
    except Exception as e:  # noqa: BLE001
        return None, f"FLA unavailable ({type(e).__name__}: {e})"


def _packing(x):
    """The packing keyword, only when packed (so a dense case also runs older jaxla versions)."""
    return {} if x["segment_ids"] is None else {"segment_ids": x["segment_ids"]}


def _fla_call(kernel, x, **fixed):
    """`fn(q, k, v, *gates)` -> FLA's `kernel(q, k, v, *gates, **fixed)[0]`, on the dense rows or,
    packed, on the rows flattened into one (`[1, B * T, ...]`, a view) with `cu_seqlens` (FLA's
    varlen convention), the output shaped back to `[B, T, ...]`."""
    if x["segment_ids"] is None:
        return lambda *args: kernel(*args, **fixed)[0]
    import torch

    offsets = cu_seqlens_of(x["segment_ids"])
    packing = {"cu_seqlens": torch.tensor(offsets, dtype=torch.long, device="cuda")}
    if "cu_seqlens_cpu" in inspect.signature(kernel).parameters:  # spares FLA a device sync
        packing["cu_seqlens_cpu"] = torch.tensor(offsets, dtype=torch.long)

    def packed(*args):
        B, T = args[0].shape[:2]
        o = kernel(*(a.reshape(1, B * T, *a.shape[2:]) for a in args), **fixed, **packing)[0]
        return o.reshape(B, T, *o.shape[2:])

    return packed


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
    chunk_gla, why = _try_fla("gla", "chunk_gla")
    return why if chunk_gla is None else _fla_call(chunk_gla, x)


def _cudnn(x, packed):
    if packed:
        return "dense attention only"
    return lambda q, k, v, *_: jax.nn.dot_product_attention(q, k, v, is_causal=True,
                                                            implementation="cudnn")


def _jaxla_simple_gla(impl):
    def build(x, packed):
        kw = _packing(x)
        return lambda q, k, v, g: ops.simple_gla(q, k, v, g, implementation=impl, **kw)[0]
    return build


def _jla_simple_gla(x, packed):
    jla_ops, why = _try_jla()
    if jla_ops is None:
        return why
    seg = x["segment_ids"]
    return lambda q, k, v, g: jla_ops.linear_attention(
        "simple_gla", q, k, v, g=g, segment_ids=seg, impl="mosaic_gpu")[0]


def _fla_simple_gla(x, packed):
    chunk_simple_gla, why = _try_fla("simple_gla", "chunk_simple_gla")
    return why if chunk_simple_gla is None else _fla_call(chunk_simple_gla, x)


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
    chunk_simple_gla, why = _try_fla("simple_gla", "chunk_simple_gla")
    if chunk_simple_gla is None:
        return why
    import torch

    g_gamma = ops.lightning_decay(x["q"].shape[2], **LIGHTNING_LAYER)
    g_gamma = torch.tensor(np.asarray(g_gamma), device="cuda")  # made once, outside the timing
    return _fla_call(chunk_simple_gla, x, g_gamma=g_gamma)


def _attention_bytes(dims, mode, gate):
    B, T, H, K, V = (dims[k] for k in "BTHKV")
    gate_bytes = {"gla": B * T * H * K * 4, "simple_gla": B * T * H * 4, None: 0}[gate]
    inputs = B * T * H * (2 * K + V) * 2 + gate_bytes
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


def _mamba_ssm_scan(x, packed):
    """mamba_ssm's `selective_scan_fn` (its CUDA kernels), in its layout (`time_last`)."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception as e:  # noqa: BLE001
        return f"mamba_ssm unavailable ({type(e).__name__}: {e})"
    if packed:
        return "mamba_ssm has no packed kernel for Mamba-1 (selective_scan_fn takes no cu_seqlens)"
    return lambda u, delta, A, Bm, Cm, D, z, bias: selective_scan_fn(
        u, delta, A, Bm, Cm, D, z, delta_bias=bias, delta_softplus=True)


def time_last(t):
    """`[B, T, X]` <-> `[B, X, T]` (contiguous), other ranks as they are: mamba_ssm's layout
    (`[B, D, L]` for u, delta, z and the output; `[B, N, L]` for B and C)."""
    return t.transpose(1, 2).contiguous() if t.dim() == 3 else t


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
        bytes_moved=lambda dims, mode: _attention_bytes(dims, mode, "gla"),
    ),
    "simple_gla": OpBench(  # a data-dependent scalar gate per head and step
        shapes=(Shape("anchor", ATTENTION),),
        make=lambda dims, packed, seed: _attention_inputs(dims, packed, seed, "simple_gla"),
        variants=(Variant("jaxla", _jaxla_simple_gla("pallas")), Variant("jla", _jla_simple_gla),
                  Variant("fla", _fla_simple_gla, torch=True),
                  Variant("jaxla xla", _jaxla_simple_gla("xla"))),
        bytes_moved=lambda dims, mode: _attention_bytes(dims, mode, "simple_gla"),
    ),
    "lightning": OpBench(
        shapes=(Shape("anchor", ATTENTION),),
        make=lambda dims, packed, seed: _attention_inputs(dims, packed, seed, None),
        variants=(Variant("jaxla", _jaxla_lightning("pallas")), Variant("jla", _jla_lightning),
                  Variant("fla", _fla_lightning, torch=True),
                  Variant("jaxla xla", _jaxla_lightning("xla"))),
        bytes_moved=lambda dims, mode: _attention_bytes(dims, mode, None),
    ),
    "selective_scan": OpBench(
        shapes=(Shape("mamba-370m", dict(B=4, T=4096, D=2048, N=16)),
                Shape("mamba-370m-b8", dict(B=8, T=2048, D=2048, N=16))),
        make=_scan_inputs,
        variants=(Variant("jaxla", _jaxla_scan("pallas")), Variant("jla", _jla_scan),
                  Variant("mamba_ssm", _mamba_ssm_scan, torch=True, torch_layout=time_last),
                  Variant("jaxla xla", _jaxla_scan("xla"))),
        bytes_moved=_scan_bytes,
    ),
}

# The inputs each op differentiates, in the order its variants' functions take them.
DIFF_ARGS = {
    "gla": ("q", "k", "v", "g"),
    "simple_gla": ("q", "k", "v", "g"),
    "lightning": ("q", "k", "v"),
    "selective_scan": ("u", "delta", "A", "B", "C", "D", "z", "delta_bias"),
}
