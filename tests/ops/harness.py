"""One harness for every op: implementations, inputs, and the packed-documents check.

`IMPLEMENTATIONS` parametrises a test over naive / xla / pallas-interpret (CPU) / pallas-gpu
(compiled, marked `gpu`). `OPS` describes each op (its inputs and how to call it) so that one
check serves all of them: `check_against_spec` holds a call (dense, or packed with segment_ids
or cu_seqlens) to its documents run one by one through the float64 spec, for the outputs, the
final states and every gradient (random cotangents for the output and the final state).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxla import ops
from jaxla.testing import assert_close, floor_of_sum
from tests.inputs import log_decay, normal

ON_GPU = jax.default_backend() == "gpu"
IMPLEMENTATIONS = [
    pytest.param("naive", id="naive"),
    pytest.param("xla", id="xla"),
    pytest.param("pallas", id="pallas-interpret",
                 marks=pytest.mark.skipif(ON_GPU, reason="interpret mode: the CPU run")),
    pytest.param("pallas", id="pallas-gpu", marks=pytest.mark.gpu),
]


@dataclasses.dataclass(frozen=True)
class Op:
    """An op as the harness sees it.

    make(rng, B, T, states, dtype): the differentiable inputs as a dict (time-major arrays have
      time on axis 1; `initial_state` has `states` rows).
    time_args: the names of the inputs with a time axis (sliced per document).
    call(args, implementation, **packing): `(output, final_state)` with output_final_state on.
    spec(args, real): the op's float64 spec on documents left-padded to a common length:
      `real [D, T]` marks each row's own steps; the padded steps must leave the state as it is.
    """

    make: Callable
    time_args: tuple[str, ...]
    call: Callable
    spec: Callable


def _gla_make(rng, B, T, S, dtype, H=2, K=16, V=24):
    sd = jnp.float64 if dtype == jnp.float64 else jnp.float32
    return dict(q=normal(rng, (B, T, H, K), dtype), k=normal(rng, (B, T, H, K), dtype),
                v=normal(rng, (B, T, H, V), dtype), g=log_decay(rng, (B, T, H, K), "medium", sd),
                initial_state=normal(rng, (S, H, K, V), sd))


def _simple_make(rng, B, T, S, dtype, H=2, K=16, V=24):
    args = _gla_make(rng, B, T, S, dtype, H, K, V)
    args["g"] = args["g"][..., 0]
    args["g_gamma"] = -jnp.asarray(rng.uniform(0.05, 0.5, (H,)), args["g"].dtype)
    return args


def _lightning_make(rng, B, T, S, dtype):
    args = _gla_make(rng, B, T, S, dtype)
    del args["g"]
    return args


def _scan_make(rng, B, T, S, dtype, D=12, N=4):
    pd = jnp.float64 if dtype == jnp.float64 else jnp.float32
    return dict(u=normal(rng, (B, T, D), dtype),
                delta=jnp.asarray(rng.uniform(-1.0, 1.0, (B, T, D)), dtype),
                A=jnp.asarray(-rng.uniform(0.5, 4.0, (D, N)), pd),
                B=normal(rng, (B, T, N), dtype), C=normal(rng, (B, T, 2, N), dtype),
                D=normal(rng, (D,), pd), z=normal(rng, (B, T, D), dtype),
                delta_bias=jnp.asarray(rng.uniform(-0.5, 0.5, (D,)), pd),
                initial_state=normal(rng, (S, D, N), pd))


def _chunked(fn, **fixed):
    return lambda a, impl, **kw: fn(**a, output_final_state=True, implementation=impl,
                                    **fixed, **kw)


def _masked(x, real):
    """Zero on padded steps (x `[D, T, ...]`, real `[D, T]`)."""
    return jnp.where(real.reshape(real.shape + (1,) * (x.ndim - 2)), x, 0.0)


def _gla_spec(a, real):
    # Padded steps: zero q, k, v and no decay.
    q, k, v, g = (_masked(a[n], real) for n in ("q", "k", "v", "g"))
    return ops.gla(q, k, v, g, initial_state=a["initial_state"], output_final_state=True,
                   implementation="naive")


def _scalar_gate_spec(gate, a, real, scale=None):
    # The head's per-step decay as an explicit gate that is zero on padded steps.
    q, k, v = (_masked(a[n], real) for n in ("q", "k", "v"))
    return ops.simple_gla(q, k, v, _masked(gate, real), scale=scale,
                          initial_state=a["initial_state"], output_final_state=True,
                          implementation="naive")


def _simple_spec(a, real):
    return _scalar_gate_spec(a["g"] + a["g_gamma"], a, real)


def _lightning_spec(layer_idx, decay):
    def spec(a, real):
        q = a["q"]
        g_gamma = ops.lightning_decay(q.shape[2], layer_idx, 4, decay)
        gate = jnp.broadcast_to(jnp.asarray(g_gamma, q.dtype), q.shape[:3])
        return _scalar_gate_spec(gate, a, real, ops.default_scale(decay, q.shape[3]))

    return spec


def _scan_call(a, impl, **kw):
    return ops.selective_scan(
        a["u"], a["delta"], a["A"], a["B"], a["C"], a["D"], a["z"], delta_bias=a["delta_bias"],
        delta_softplus=True, initial_state=a["initial_state"], output_final_state=True,
        implementation=impl, **kw)


def _scan_spec(a, real):
    # Padded steps: u = 0 and delta = -inf, so dt = softplus(-inf) = 0: no decay, no input.
    b = dict(a, u=_masked(a["u"], real), delta=jnp.where(real[..., None], a["delta"], -jnp.inf))
    return _scan_call(b, "naive")


OPS = {
    "gla": Op(_gla_make, ("q", "k", "v", "g"), _chunked(ops.gla, chunk_size=16), _gla_spec),
    "gla_recurrent": Op(_gla_make, ("q", "k", "v", "g"), _chunked(ops.gla_recurrent),
                        _gla_spec),
    "simple_gla": Op(_simple_make, ("q", "k", "v", "g"),
                     _chunked(ops.simple_gla, chunk_size=16), _simple_spec),
    "simple_gla_recurrent": Op(_simple_make, ("q", "k", "v", "g"),
                               _chunked(ops.simple_gla_recurrent), _simple_spec),
    "lightning_attention": Op(
        _lightning_make, ("q", "k", "v"),
        _chunked(ops.lightning_attention, layer_idx=1, num_layers=4, decay="fla", chunk_size=16),
        _lightning_spec(1, "fla")),
    "lightning_attention_recurrent": Op(
        _lightning_make, ("q", "k", "v"),
        _chunked(ops.lightning_attention_recurrent, layer_idx=2, num_layers=4),
        _lightning_spec(2, "minimax")),
    "selective_scan": Op(_scan_make, ("u", "delta", "B", "C", "z"), _scan_call, _scan_spec),
}


def document_lengths(rng, T: int, max_docs: int) -> list[int]:
    """Random lengths summing to T: a 1-token document, one ending on a 16-step chunk edge,
    short and long ones (the boundaries fall on and inside chunk edges)."""
    cuts = {1, 16 * int(rng.integers(2, max(3, T // 16)))} if T > 40 else {1}
    while len(cuts) < max_docs - 1:
        cuts.add(int(rng.integers(1, T)))
    cuts = sorted(c for c in cuts if 0 < c < T)
    return list(np.diff([0, *cuts, T]))


def _float64(x):
    """x's values in float64 (16-bit floats through float32)."""
    return jnp.asarray(x if x.dtype == jnp.float64 else jnp.asarray(x, jnp.float32), jnp.float64)


def _vjp(fn, args: dict, cotangents):
    names = list(args)
    out, pullback = jax.vjp(lambda *xs: fn(dict(zip(names, xs, strict=True))),
                            *args.values())
    return out, dict(zip(names, pullback(cotangents), strict=True))


def _one_by_one(op: Op, rows: list[list[int]], kind: str, T: int, max_docs: int):
    """The packed call's expected `(output, final_state)` as a function of its inputs: every
    document through `op.spec` on its own, all in one call.

    Documents become the rows of a `[B * max_docs, T]` batch, each right-aligned (left-padded
    with steps that leave the state unchanged), with its own initial state: the row's for a
    row's first document (segment_ids), its own (cu_seqlens), zeros otherwise. The outputs are
    gathered back to the packed positions and the final states to their rows, so that `jax.vjp`
    of this function gives the expected gradients of every packed input.
    """
    n_slots = len(rows) * max_docs
    src_row = np.zeros(n_slots, np.int32)  # packed row of each document slot
    src_pos = np.zeros((n_slots, T), np.int32)  # packed position of each step of a slot
    real = np.zeros((n_slots, T), bool)
    state_of = np.zeros(n_slots, np.int32)  # initial-state row feeding each slot
    feeds = np.zeros(n_slots, bool)
    slot_of = np.zeros((len(rows), T), np.int32)  # slot and step of every packed position
    step_of = np.zeros((len(rows), T), np.int32)
    final_slot = []  # the slot whose final state is each final-state row
    slot = 0
    for b, lengths in enumerate(rows):
        start = 0
        for d, length in enumerate(lengths):
            pad = T - length
            src_row[slot] = b
            src_pos[slot, pad:] = np.arange(start, start + length)
            real[slot, pad:] = True
            state_of[slot] = d if kind == "cu_seqlens" else b
            feeds[slot] = kind == "cu_seqlens" or d == 0
            slot_of[b, start:start + length] = slot
            step_of[b, start:start + length] = np.arange(pad, T)
            if kind == "cu_seqlens" or d == len(lengths) - 1:
                final_slot.append(slot)
            start += length
            slot += 1

    def expected(args):
        docs = {}
        for name, x in args.items():
            if name in op.time_args:
                docs[name] = x[src_row[:, None], src_pos]
            elif name == "initial_state":
                shape = (n_slots,) + (1,) * (x.ndim - 1)
                docs[name] = jnp.where(feeds.reshape(shape), x[state_of], 0.0)
            else:
                docs[name] = x
        out, final = op.spec(docs, jnp.asarray(real))
        return out[slot_of, step_of], final[np.asarray(final_slot)]

    return expected


def check_against_spec(op_name: str, implementation: str, rng, *, kind: str,
                       dtype=jnp.float32, B: int = 2, T: int = 100, max_docs: int = 5):
    """A call equals its documents run one by one through the float64 spec.

    kind: "dense" (one document per row), "segment_ids" (B rows, each with its own documents;
    ids repeat, as they may) or "cu_seqlens" (one row, one initial and final state per document).
    """
    op = OPS[op_name]
    if kind == "cu_seqlens":
        B = 1
    rows = ([[T]] * B if kind == "dense"
            else [document_lengths(rng, T, max_docs) for _ in range(B)])
    S = len(rows[0]) if kind == "cu_seqlens" else B
    args = op.make(rng, B, T, S, dtype)
    if kind == "dense":
        packing = {}
    elif kind == "segment_ids":
        ids = np.stack([np.repeat(np.arange(len(r)) % 3, r) for r in rows])
        packing = dict(segment_ids=jnp.asarray(ids, jnp.int32))
    else:
        packing = dict(cu_seqlens=jnp.asarray(np.cumsum([0, *rows[0]]), jnp.int32))

    call = lambda a: op.call(a, implementation, **packing)  # noqa: E731
    cts = tuple(jnp.asarray(rng.standard_normal(x.shape), x.dtype)
                for x in jax.eval_shape(call, args))
    (out, final), grads = jax.jit(lambda a, c: _vjp(call, a, c))(args, cts)

    with jax.enable_x64(True):  # float64 inputs and cotangents (the packed call's values)
        expected = jax.jit(_one_by_one(op, rows, kind, T, max_docs))
        (exp_out, exp_final), exp_grads = _vjp(
            expected, {n: _float64(x) for n, x in args.items()}, tuple(map(_float64, cts)))

    assert_close(out, exp_out, name="output", dtype=dtype)
    assert_close(final, exp_final, name="final_state", dtype=dtype)
    for n, g in grads.items():
        # g_gamma's gradient sums the per-position gate gradients (g's, as g_gamma + g is the
        # gate), each of K x V products: `floor_of_sum` of them (jaxla.testing).
        floor = None
        if n == "g_gamma":
            (B, T, H, K), V = args["q"].shape, args["v"].shape[-1]
            floor = floor_of_sum(np.asarray(exp_grads["g"]).reshape(B * T, H), dtype=dtype,
                                 products=K * V)
        assert_close(g, exp_grads[n], name=f"d{n}", dtype=dtype, floor=floor)
