"""Simple GLA / Lightning Attention Pallas kernels against the float64 spec.

Every numeric test runs the kernels in Pallas' interpreter on CPU and has a compiled twin marked
`gpu` (the same assertions; the gpu list adds larger shapes and head dims of 256). Outputs, final
state and the gradients of q, k, v, g, g_gamma and initial_state (random cotangents for the
output and the final state) are compared with the naive spec computed in float64 on the upcast
inputs, within the bound of the kernel's input dtype. The spec sees the very cotangents the
kernel sees (rounded to the output dtype), so bf16 errors measure the kernel alone.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxla import ops
from jaxla.ops import packing as pk
from jaxla.testing import (
    FLOOR,
    assert_close,
    floor_of_sum,
    outputs_and_grads,
    random_like,
    rel_error,
)
from pallas_kernels import simple_gla as kernels
from pallas_kernels._common import lower_for_cuda
from pallas_kernels.simple_gla import api
from tests.inputs import log_decay, normal

F32, BF16, F16 = jnp.float32, jnp.bfloat16, jnp.float16
ON = [pytest.param("cpu", id="interpret"), pytest.param("gpu", id="gpu", marks=pytest.mark.gpu)]


def _inputs(rng, shape, gate, kind, with_h0, dtype):
    """q, k, v in `dtype`; g [B, T, H] / g_gamma [H] float32 per `kind`; h0 float32 or None."""
    B, T, H, K, V = shape
    q, k = normal(rng, (B, T, H, K), dtype), normal(rng, (B, T, H, K), dtype)
    v = normal(rng, (B, T, H, V), dtype)
    g = log_decay(rng, (B, T, H), gate) if kind in ("g", "both") else None
    g_gamma = log_decay(rng, (H,), gate) if kind in ("g_gamma", "both") else None
    h0 = normal(rng, (B, H, K, V), F32) if with_h0 else None
    return q, k, v, g, g_gamma, h0


def _packed(q, k, v, g, g_gamma, h0):
    """Differentiable arguments and their names (q, k, v first)."""
    optional = [(n, x) for n, x in (("g", g), ("g_gamma", g_gamma), ("h0", h0)) if x is not None]
    return ["q", "k", "v"] + [n for n, _ in optional], (q, k, v) + tuple(x for _, x in optional)


def _bind(fn, names):
    """`fn(q, k, v, g=, g_gamma=, h0=)` as a function of the packed arguments."""
    def call(*args):
        kw = dict(zip(names, args, strict=True))
        return fn(kw["q"], kw["k"], kw["v"], g=kw.get("g"), g_gamma=kw.get("g_gamma"),
                  h0=kw.get("h0"))

    return call


def _spec(q, k, v, *, g, g_gamma, h0, scale=None):
    return ops.simple_gla(q, k, v, g, g_gamma=g_gamma, scale=scale, initial_state=h0,
                          output_final_state=True, implementation="naive")


def _check(kernel_fn, spec_fn, args, names, dtype, rng, gate_bound=None):
    """Run the kernel (jitted) and the float64 spec with the same cotangents; compare all
    (and dg, dg_gamma within `gate_bound` too when it is given)."""
    seed = int(rng.integers(1 << 30))
    def with_grads(fn):
        return jax.jit(lambda *a: outputs_and_grads(fn, a, np.random.default_rng(seed)))

    (o, ht), grads = with_grads(_bind(kernel_fn, names))(*args)
    B, T, H, K = args[0].shape
    V = args[2].shape[-1]
    with jax.enable_x64(True):
        def spec_cast(arg_names):  # outputs in the kernel's dtypes: the kernel's cotangents
            spec = _bind(spec_fn, arg_names)
            return lambda *a: jax.tree.map(lambda x, y: x.astype(y.dtype), spec(*a), (o, ht))

        args64 = tuple(jnp.asarray(x, jnp.float64) for x in args)
        _, grads_ref = with_grads(spec_cast(names))(*args64)
        o_ref, ht_ref = jax.jit(_bind(spec_fn, names))(*args64)
        o_ref, ht_ref, grads_ref = jax.tree.map(np.asarray, (o_ref, ht_ref, grads_ref))
        # dg_gamma's B x T terms: the per-position gate gradients, g's own when g is given
        # (the gate is g + g_gamma), else those of g_gamma folded into a per-position g.
        if "g" in names and "g_gamma" in names:
            dg_gamma_terms = grads_ref[names.index("g")].reshape(B * T, H)
        elif "g_gamma" in names:
            kw = dict(zip(names, args64, strict=True))
            folded = jnp.broadcast_to(kw.pop("g_gamma"), (B, T, H))
            _, fold_grads = with_grads(spec_cast([*kw, "g"]))(*kw.values(), folded)
            dg_gamma_terms = np.asarray(fold_grads[-1]).reshape(B * T, H)
    assert_close(o, o_ref, dtype=dtype, name="o")
    assert_close(ht, ht_ref, dtype=dtype, name="final_state")
    # A position's gate gradient sums the K x V products of its state: a sqrt(K V) floor
    # (jaxla.testing). Seen: dg of one position (B = T = 1, K = V = 16) came out 0.066 (median
    # 2.1 over 950 seeds) with a float32 error of 1.8e-6, over its bound of 1.7e-6, mostly the
    # single floor of 1e-6 (errors over those seeds: median 5e-7, largest 1.2e-5, on large
    # values). dg_gamma sums those B x T gradients, which under a weak decay cancel to far
    # below their size (B1 T64 K=V=64, JAXLA_TEST_SEED=71455: 40.36 from terms of total size
    # 8,360; float32 errors 1.7e-3 kernel, 4.9e-4 xla path, 9.6e-3 the spec itself in float32,
    # over the 9.2e-4 a sqrt(B T K V) floor allowed): `floor_of_sum` of those terms.
    def gate_floors(bound):
        out = {"g": float(np.sqrt(K * V)) * FLOOR[jnp.dtype(dtype)]}
        if "g_gamma" in names:
            out["g_gamma"] = floor_of_sum(dg_gamma_terms, dtype=dtype, products=K * V,
                                          bound=bound)
        return out

    floors = gate_floors(None)
    tight_floors = gate_floors(gate_bound) if gate_bound is not None else {}
    for name, a, b in zip(names, grads, grads_ref, strict=True):
        assert a.shape == b.shape, (name, a.shape, b.shape)
        assert_close(a, b, dtype=dtype, name="d" + name, floor=floors.get(name))
        if name in tight_floors:
            assert_close(a, b, dtype=dtype, name=f"d{name} (gate-gradient bound)",
                         bound=gate_bound, floor=tight_floors[name])


def _id(case):
    shape, gate, kind, with_h0, dtype = case[:5]
    h0 = "h0" if with_h0 else "no_h0"
    return "B{}-T{}-H{}-K{}-V{}".format(*shape) + f"-{gate}-{kind}-{h0}-{jnp.dtype(dtype).name}"


# (shape (B, T, H, K, V), gate regime, which gates, initial state, dtype): a covering subset of
# DESIGN.md §6 (every T, head dim, H, regime and gate kind appears; not the full product).
CASES = [
    ((1, 1, 1, 16, 16), "medium", "both", True, F32),
    ((2, 63, 3, 48, 100), "strong", "g", False, F32),
    ((1, 64, 1, 64, 64), "weak", "g_gamma", True, F32),
    ((2, 65, 3, 100, 48), "medium", "both", True, F32),
    ((1, 200, 3, 128, 16), "strong", "both", False, F32),
    ((1, 200, 1, 16, 128), "weak", "g", True, F32),
    ((2, 65, 1, 32, 32), "medium", "none", True, F32),
    ((1, 130, 3, 64, 48), "strong", "g_gamma", True, F32),
    ((2, 65, 3, 64, 64), "medium", "both", True, BF16),
    ((1, 200, 1, 48, 100), "strong", "g", False, BF16),
    ((1, 63, 3, 128, 128), "weak", "g_gamma", True, BF16),
]
GPU_CASES = [
    ((2, 1000, 4, 128, 128), "medium", "both", True, BF16),
    ((1, 300, 2, 256, 256), "medium", "g", True, BF16),
    ((1, 300, 2, 256, 256), "strong", "g_gamma", True, F32),
    ((1, 2048, 2, 64, 128), "weak", "g", True, BF16),
    ((4, 256, 16, 128, 128), "medium", "g_gamma", False, BF16),
]


def _chunked(q, k, v, *, g, g_gamma, h0):
    return ops.simple_gla(q, k, v, g, g_gamma=g_gamma, initial_state=h0, output_final_state=True,
                          implementation="pallas")


@pytest.mark.parametrize("on", ON)
@pytest.mark.parametrize("case", CASES, ids=_id)
def test_chunked_matches_spec(rng, on, case):
    shape, gate, kind, with_h0, dtype = case
    names, args = _packed(*_inputs(rng, shape, gate, kind, with_h0, dtype))
    _check(_chunked, _spec, args, names, dtype, rng)


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_CASES, ids=_id)
def test_chunked_matches_spec_large(rng, case):
    shape, gate, kind, with_h0, dtype = case
    names, args = _packed(*_inputs(rng, shape, gate, kind, with_h0, dtype))
    _check(_chunked, _spec, args, names, dtype, rng)


# bf16 gate gradients. dg sums, over a chunk, and dg_gamma over all of B and T, terms that share
# one state: a bf16 rounding of the state (or of d state, or of the decayed inputs that update
# them) repeats in every position and adds up. The backward splits those operands into hi + lo
# bf16 halves (chunk_bwd.py), which leaves dg and dg_gamma at ~1e-5 (rms over draws; the worst,
# up to 5e-4 in 400 draws of strong gates, are on dg_gamma ~1e-4, far below the absolute floor).
# Without the split they were 2e-5 to 4e-2: past the 5e-3 contract in about one draw in 20, past
# GATE_GRAD_BOUND in 50-98% of the draws in these regimes, so DRAWS draws per case catch a
# regression on (nearly) every run. Each draw is also held to the contract for every output.
GATE_GRAD_CASES = [
    ((1, 63, 3, 128, 128), "weak", "both", True, BF16),  # one chunk: rounded h0 and d final state
    ((2, 130, 3, 64, 64), "weak", "both", True, BF16),  # three chunks: rounded state updates too
    ((2, 130, 3, 64, 64), "medium", "g_gamma", False, BF16),
    ((1, 256, 2, 64, 64), "strong", "g_gamma", True, BF16),
]
GATE_GRAD_BOUND = 1e-3
DRAWS = 5


def _vjp_jit(fn, names):
    """`(args, cotangents) -> (outputs, grads)`, jitted once for many draws of one shape."""
    call = _bind(fn, names)

    def run(args, cotangents):
        outputs, vjp = jax.vjp(call, *args)
        pairs = zip(cotangents, outputs, strict=True)
        return outputs, vjp(tuple(c.astype(o.dtype) for c, o in pairs))

    return jax.jit(run)


@pytest.mark.parametrize("on", ON)
@pytest.mark.parametrize("case", GATE_GRAD_CASES, ids=_id)
def test_gate_gradients_over_draws(rng, on, case):
    """DRAWS draws of bf16 inputs and cotangents: every output within the contract, dg and
    dg_gamma within GATE_GRAD_BOUND (kernel and spec jitted once, cotangents as arguments)."""
    shape, gate, kind, with_h0, dtype = case
    draws = [_packed(*_inputs(rng, shape, gate, kind, with_h0, dtype)) for _ in range(DRAWS)]
    names = draws[0][0]
    kernel, spec = _vjp_jit(_chunked, names), _vjp_jit(_spec, names)
    out_structs = jax.eval_shape(_bind(_chunked, names), *draws[0][1])
    for d, (_, args) in enumerate(draws):
        cotangents = tuple(random_like(rng, x) for x in out_structs)
        (o, ht), grads = kernel(args, cotangents)
        with jax.enable_x64(True):
            (o_ref, ht_ref), grads_ref = jax.tree.map(np.asarray, spec(
                *(tuple(jnp.asarray(x, jnp.float64) for x in xs) for xs in (args, cotangents))))
        assert_close(o, o_ref, dtype=dtype, name=f"o (draw {d})")
        assert_close(ht, ht_ref, dtype=dtype, name=f"final_state (draw {d})")
        for name, a, b in zip(names, grads, grads_ref, strict=True):
            assert_close(a, b, dtype=dtype, name=f"d{name} (draw {d})")
            if name in ("g", "g_gamma"):
                assert_close(a, b, dtype=dtype, name=f"d{name} (draw {d}, gate-gradient bound)",
                             bound=GATE_GRAD_BOUND)


# Block-size variants through the kernel API: other chunks, narrow tiles, the fused backward.
BLOCK_CASES = [
    (((2, 100, 2, 32, 48), "medium", "both", True, F32),
     kernels.BlockSizes(chunk=32, block_v=16, block_k_dq=16, block_k_dk=32, block_v_dv=16,
                        fuse_bwd=True)),
    (((1, 150, 2, 64, 32), "strong", "g_gamma", True, BF16),
     kernels.BlockSizes(chunk=128, block_v=32, fuse_bwd=True)),
    (((1, 70, 1, 16, 16), "weak", "none", False, F32), kernels.BlockSizes(chunk=16, fuse_bwd=True)),
]


@pytest.mark.parametrize("on", ON)
@pytest.mark.parametrize("case,block_sizes", BLOCK_CASES,
                         ids=lambda c: _id(c) if isinstance(c, tuple) else None)
def test_block_sizes(rng, on, case, block_sizes):
    shape, gate, kind, with_h0, dtype = case

    def kernel(q, k, v, *, g, g_gamma, h0):
        return kernels.simple_gla(q, k, v, g, g_gamma, initial_state=h0, output_final_state=True,
                                  block_sizes=block_sizes)

    names, args = _packed(*_inputs(rng, shape, gate, kind, with_h0, dtype))
    _check(kernel, _spec, args, names, dtype, rng)


RECURRENT_CASES = [
    ((2, 1, 3, 48, 100), "medium", "both", True, F32),
    ((1, 63, 1, 64, 64), "strong", "g", True, F32),
    ((1, 20, 3, 128, 16), "weak", "g_gamma", False, BF16),
    ((2, 17, 2, 32, 32), "medium", "none", True, F32),
]


def _recurrent(q, k, v, *, g, g_gamma, h0):
    return ops.simple_gla_recurrent(q, k, v, g, g_gamma=g_gamma, initial_state=h0,
                                    output_final_state=True, implementation="pallas")


@pytest.mark.parametrize("on", ON)
@pytest.mark.parametrize("case", RECURRENT_CASES, ids=_id)
def test_recurrent_matches_spec(rng, on, case):
    """The decode kernel's forward; its gradients come from the chunked backward kernels."""
    shape, gate, kind, with_h0, dtype = case
    names, args = _packed(*_inputs(rng, shape, gate, kind, with_h0, dtype))
    _check(_recurrent, _spec, args, names, dtype, rng)


@pytest.mark.parametrize("on", ON)
def test_decode_token_by_token_matches_full_forward(rng, on):
    """Prefill with the chunked kernel, then decode one token at a time with the recurrent one."""
    q, k, v, g, g_gamma, h0 = _inputs(rng, (2, 9, 3, 32, 48), "medium", "both", True, F32)
    prefill = 4
    kw = dict(g_gamma=g_gamma, output_final_state=True, implementation="pallas")
    chunked = jax.jit(lambda q, k, v, g, h: ops.simple_gla(q, k, v, g, initial_state=h, **kw))
    step = jax.jit(
        lambda q, k, v, g, h: ops.simple_gla_recurrent(q, k, v, g, initial_state=h, **kw))
    o, state = chunked(q[:, :prefill], k[:, :prefill], v[:, :prefill], g[:, :prefill], h0)
    outs = [o]
    for t in range(prefill, q.shape[1]):
        o, state = step(q[:, t:t + 1], k[:, t:t + 1], v[:, t:t + 1], g[:, t:t + 1], state)
        outs.append(o)
    with jax.enable_x64(True):
        q, k, v, g, g_gamma, h0 = (jnp.asarray(x, jnp.float64) for x in (q, k, v, g, g_gamma, h0))
        o_ref, h_ref = _spec(q, k, v, g=g, g_gamma=g_gamma, h0=h0)
        o_ref, h_ref = np.asarray(o_ref), np.asarray(h_ref)
    assert_close(jnp.concatenate(outs, axis=1), o_ref, name="o")
    assert_close(state, h_ref, name="final_state")


@pytest.mark.parametrize("on", ON)
@pytest.mark.parametrize("decay,recurrent", [("fla", False), ("minimax", False), ("minimax", True)])
def test_lightning_attention(rng, on, decay, recurrent):
    """Both decay conventions through `ops.lightning_attention`: the decay is a numpy constant,
    so the backward skips gate-gradient work; q, k, v and h0 gradients are still checked."""
    H = 3
    q, k, v, _, _, h0 = _inputs(rng, (2, 70, H, 32, 32), "medium", "none", True, F32)
    layer_idx, num_layers = 2, 12
    op = ops.lightning_attention_recurrent if recurrent else ops.lightning_attention

    def kernel(q, k, v, *, g, g_gamma, h0):
        return op(q, k, v, layer_idx=layer_idx, num_layers=num_layers, decay=decay,
                  initial_state=h0, output_final_state=True, implementation="pallas")

    decays = ops.lightning_decay(H, layer_idx, num_layers, decay)
    scale = ops.default_scale(decay, 32)

    def spec(q, k, v, *, g, g_gamma, h0):
        return _spec(q, k, v, g=None, g_gamma=jnp.asarray(decays, q.dtype), h0=h0, scale=scale)

    names, args = _packed(q, k, v, None, None, h0)
    _check(kernel, spec, args, names, F32, rng)


def test_constant_gate_skips_gradient_work():
    """A numpy g_gamma (lightning attention) cannot be differentiated: no gate terms computed."""
    q = jnp.ones((1, 8, 2, 16), F32)
    st = api._static(q, q, None, np.float32([-0.5, -1.0]), 1.0, False, None, True, 64)
    assert not st.gate_grad
    traced = []
    jax.make_jaxpr(lambda g: traced.append(api._static(q, q, g, None, 1.0, False, None, True, 64)))(
        jnp.zeros((1, 8, 2), F32))
    assert traced[0].gate_grad


def _pallas_eqns(jaxpr):
    """Every pallas_call equation, also inside custom_vjp / pjit sub-jaxprs."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "pallas_call":
            yield eqn
            continue
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                sub = getattr(sub, "jaxpr", sub)
                if hasattr(sub, "eqns"):
                    yield from _pallas_eqns(sub)


@pytest.mark.parametrize("dtype", [BF16, F32], ids=["bf16", "f32"])
@pytest.mark.parametrize("kind", ["g", "g_gamma", "none"])
@pytest.mark.parametrize("fuse", [False, True], ids=["bwd3", "bwd_fused"])
def test_kernels_lower_for_cuda(dtype, kind, fuse):
    """Forward and backward kernels (both layouts of the backward, with and without gate
    gradients) lower through Pallas-Triton for an H100; each declares a cost estimate."""
    B, T, H, K, V = 2, 150, 3, 100, 128
    q, v = jnp.zeros((B, T, H, K), dtype), jnp.zeros((B, T, H, V), dtype)
    g, g_gamma = jnp.zeros((B, T, H), F32), jnp.zeros((H,), F32)
    h0 = jnp.zeros((B, H, K, V), F32)
    bs = kernels.BlockSizes(fuse_bwd=fuse)

    def loss(q, k, v, g, g_gamma, h0):
        o, ht = kernels.simple_gla(q, k, v, g if kind == "g" else None,
                                   g_gamma if kind == "g_gamma" else None, initial_state=h0,
                                   output_final_state=True, block_sizes=bs, interpret=False)
        return jnp.sum(o.astype(F32)) + jnp.sum(ht)

    # value_and_grad: the loss needs the forward output (jax.grad alone lets jax 0.12 drop the
    # forward kernel when no gradient reads its output).
    grad = jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4, 5))
    text = lower_for_cuda(grad, q, q, v, g, g_gamma, h0)
    eqns = list(_pallas_eqns(jax.make_jaxpr(grad)(q, q, v, g, g_gamma, h0).jaxpr))
    launches = 1 + (2 if kind != "none" else 1) if fuse else 4
    assert text.count("__gpu$xla.gpu.triton") == launches == len(eqns)
    for eqn in eqns:
        assert eqn.params["name"].startswith("simple_gla_")
        assert eqn.params["cost_estimate"] is not None and eqn.params["cost_estimate"].flops > 0


@pytest.mark.parametrize("dtype", [BF16, F32], ids=["bf16", "f32"])
def test_recurrent_kernel_lowers_for_cuda(dtype):
    q, v = jnp.zeros((2, 1, 3, 48), dtype), jnp.zeros((2, 1, 3, 100), dtype)
    h0 = jnp.zeros((2, 3, 48, 100), F32)
    gates = ((jnp.zeros((2, 1, 3), F32), None), (None, jnp.zeros((3,), F32)), (None, None))
    for g, g_gamma in gates:
        text = lower_for_cuda(
            lambda q, k, v, h, g=g, g_gamma=g_gamma: kernels.simple_gla_recurrent(
                q, k, v, g, g_gamma, initial_state=h, output_final_state=True, interpret=False),
            q, q, v, h0)
        assert text.count("__gpu$xla.gpu.triton") == 1


def test_head_dims_and_dtypes_the_kernel_cannot_take():
    """The op refuses them through its dispatcher (naming the value), the kernel API itself
    naming the argument."""
    q = jnp.ones((1, 4, 1, 300), F32)
    v = jnp.ones((1, 4, 1, 16), F32)
    with pytest.raises(ValueError, match="K=300"):
        ops.simple_gla(q, q, v, implementation="pallas")
    with pytest.raises(ValueError, match="q.shape"):
        kernels.simple_gla(q, q, v)
    q, v = v, jnp.ones((1, 4, 1, 257), F32)
    with pytest.raises(ValueError, match="V=257"):
        ops.simple_gla_recurrent(q, q, v, implementation="pallas")
    with pytest.raises(ValueError, match="v.shape"):
        kernels.simple_gla_recurrent(q, q, v)
    with jax.enable_x64(True):
        q64 = jnp.ones((1, 4, 1, 16), jnp.float64)
        with pytest.raises(ValueError, match="float64"):
            ops.simple_gla(q64, q64, q64, implementation="pallas")
        with pytest.raises(TypeError, match="q.dtype"):
            kernels.simple_gla(q64, q64, q64)
    # None means the kernel only on a GPU; elsewhere (and for inputs it cannot take) the XLA path.
    o, _ = ops.simple_gla(q, q, v)
    assert o.shape == v.shape


@pytest.mark.parametrize("bad", [dict(chunk=8), dict(chunk=48), dict(block_v=24),
                                 dict(block_k_dq=8), dict(num_warps_fwd=3), dict(num_stages_bwd=0)])
def test_block_sizes_validation(bad):
    with pytest.raises(ValueError):
        kernels.BlockSizes(**bad)


def test_default_block_sizes():
    default = kernels.BlockSizes.get_default
    bs = default(head_dim_k=128, head_dim_v=128, dtype=BF16)
    assert (bs.chunk, bs.block_v, bs.num_warps_fwd) == (64, 64, 4)
    big = default(head_dim_k=256, head_dim_v=256, dtype=F32)
    assert big.num_warps_fwd == 8 and big.num_stages_fwd == 1 and big.block_v == 32
    assert default(head_dim_k=256, head_dim_v=100, dtype=BF16).block_k_dq == 64
    long = default(head_dim_k=64, head_dim_v=64, dtype=BF16, chunk=128)  # launch follows chunk
    assert long.chunk == 128 and long.num_warps_fwd == 8 and long.num_stages_fwd == 1
    fitted = kernels.BlockSizes(block_v=128).for_call(head_dim_k=32, head_dim_v=10, dtype=BF16)
    assert fitted.block_v == 16 and fitted.num_warps_fwd == 4


# --- packed documents -------------------------------------------------------------------------
# Rows of document lengths at T = 75 with chunks of 16 (the last chunk mostly padding): row 0 has
# one-step documents at t = 0, on a chunk edge (t = 16) and inside a chunk (t = 57), documents
# shorter than a chunk and one of 40 steps over three chunks; row 1 a document filling chunk 0
# exactly and a one-step document inside chunk 2. Tiles of 16 give every kernel several programs
# per head (K = V = 32), so per-tile slices of the states are exercised.
PACKED_T, PACKED_H, PACKED_K, PACKED_V = 75, 2, 32, 32
ROWS = ((1, 15, 1, 40, 1, 17), (16, 30, 1, 28))


def _packed_blocks(fuse_bwd=False):
    return kernels.BlockSizes(chunk=16, block_v=16, block_k_dq=16, block_k_dk=16, block_v_dv=16,
                              block_v_recurrent=16, fuse_bwd=fuse_bwd)


def _segment_ids(B):
    """Ids that repeat (0, 1, 2, 0, ...), as segment_ids may."""
    return jnp.asarray(np.stack([np.repeat(np.arange(len(r)) % 3, r) for r in ROWS[:B]]),
                       jnp.int32)


def _cu_seqlens():
    return jnp.asarray(np.cumsum([0, *ROWS[0]]), jnp.int32)


def _packed_spec(**packing):
    """The float64 spec with segment_ids or cu_seqlens."""
    def spec(q, k, v, *, g, g_gamma, h0):
        return ops.simple_gla(q, k, v, g, g_gamma=g_gamma, initial_state=h0,
                              output_final_state=True, implementation="naive", **packing)

    return spec


def _segments_kernel(form, segment_ids, block_sizes, interpret=None):
    """The kernel API with `resets` (True where the id changes)."""
    resets = pk.resets_from_segment_ids(segment_ids)
    fn = kernels.simple_gla if form == "chunked" else kernels.simple_gla_recurrent

    def kernel(q, k, v, *, g, g_gamma, h0):
        return fn(q, k, v, g, g_gamma, initial_state=h0, output_final_state=True, resets=resets,
                  block_sizes=block_sizes, interpret=interpret)

    return kernel


def _documents_kernel(form, cu_seqlens, block_sizes, interpret=None):
    """The kernel API with per-document states: the recurrent kernel with `docs`; the chunked
    one on inputs aligned to its chunks as the op aligns them (`chunk_docs`, the total gate)."""
    num_docs = cu_seqlens.shape[0] - 1

    def kernel(q, k, v, *, g, g_gamma, h0):
        docs = pk.docs_from_cu_seqlens(cu_seqlens, q.shape[1])
        kw = dict(initial_state=h0, output_final_state=True, num_docs=num_docs,
                  block_sizes=block_sizes, interpret=interpret)
        if form == "recurrent":
            return kernels.simple_gla_recurrent(q, k, v, g, g_gamma, docs=docs, **kw)
        aligned = pk.align(docs, num_docs, block_sizes.chunk)
        gate = jnp.zeros(q.shape[:3], F32)
        for x in (g, g_gamma):
            gate = gate if x is None else gate + x
        o, ht = kernels.simple_gla(
            *(pk.to_aligned(x, aligned) for x in (q, k, v)), pk.to_aligned(gate, aligned),
            chunk_docs=aligned.chunk_docs, gate_grad=g is not None or g_gamma is not None, **kw)
        return pk.from_aligned(o, aligned), ht

    return kernel


def _packed_case(rng, form, packing, kind, gate, with_h0, dtype, B, fuse=False, interpret=None,
                 dims=(PACKED_H, PACKED_K, PACKED_V)):
    """(kernel, spec, names, args) of one packed case; dims = (H, K, V)."""
    q, k, v, g, g_gamma, _ = _inputs(rng, (B, PACKED_T, *dims), gate, kind, False, dtype)
    states = B if packing == "segment_ids" else len(ROWS[0])
    h0 = normal(rng, (states, *dims), F32) if with_h0 else None
    names, args = _packed(q, k, v, g, g_gamma, h0)
    bs = _packed_blocks(fuse)
    if packing == "segment_ids":
        ids = _segment_ids(B)
        return (_segments_kernel(form, ids, bs, interpret), _packed_spec(segment_ids=ids), names,
                args)
    cu = _cu_seqlens()
    return _documents_kernel(form, cu, bs, interpret), _packed_spec(cu_seqlens=cu), names, args


# (form, packing, which gates, gate regime, initial state, dtype, B, fused backward, x64): four
# of them run with jax_enable_x64 on (every packed kernel interpreted under x64).
PACKED_CASES = [
    ("chunked", "segment_ids", "both", "medium", True, F32, 2, False, True),
    ("chunked", "segment_ids", "g_gamma", "medium", False, BF16, 2, True, False),
    ("chunked", "segment_ids", "none", "medium", True, F16, 1, False, False),
    ("chunked", "cu_seqlens", "g", "strong", True, F32, 1, True, False),
    ("chunked", "cu_seqlens", "both", "medium", True, BF16, 1, False, True),
    ("chunked", "cu_seqlens", "none", "medium", False, F16, 1, False, False),
    ("recurrent", "segment_ids", "both", "medium", True, BF16, 2, False, True),
    ("recurrent", "cu_seqlens", "g", "medium", True, F32, 1, False, True),
    ("recurrent", "cu_seqlens", "g_gamma", "strong", False, F16, 1, False, False),
]


def _packed_id(case):
    form, packing, kind, gate, with_h0, dtype, B, fuse, x64 = case
    return (f"{form}-{packing}-{kind}-{gate}-{'h0' if with_h0 else 'no_h0'}-"
            f"{jnp.dtype(dtype).name}-B{B}" + ("-fused" if fuse else "") + ("-x64" if x64 else ""))


@pytest.mark.parametrize("on", ON)
@pytest.mark.parametrize("case", PACKED_CASES, ids=_packed_id)
def test_packed_documents_match_spec(rng, on, case):
    """Packed documents through the kernel API against the float64 spec: outputs, final states
    and every gradient; bf16 gate gradients also within GATE_GRAD_BOUND (the hi/lo splits hold
    in the packed path)."""
    form, packing, kind, gate, with_h0, dtype, B, fuse, x64 = case
    with jax.enable_x64(x64):
        kernel, spec, names, args = _packed_case(rng, form, packing, kind, gate, with_h0, dtype,
                                                 B, fuse)
        _check(kernel, spec, args, names, dtype, rng,
               gate_bound=GATE_GRAD_BOUND if dtype == BF16 else None)


def _wide_values(jaxpr):
    """(primitive, dtype) of every 64-bit value inside `jaxpr`, sub-jaxprs included."""
    found = set()
    for eqn in jaxpr.eqns:
        for x in (*eqn.invars, *eqn.outvars):
            dtype = getattr(getattr(x, "aval", None), "dtype", None)
            if dtype is not None and jnp.dtype(dtype).itemsize == 8:
                found.add((eqn.primitive.name, str(dtype)))
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                sub = getattr(sub, "jaxpr", sub)
                if hasattr(sub, "eqns"):
                    found |= _wide_values(sub)
    return found


def _dense_kernel(form, block_sizes, interpret=None):
    fn = kernels.simple_gla if form == "chunked" else kernels.simple_gla_recurrent

    def kernel(q, k, v, *, g, g_gamma, h0):
        return fn(q, k, v, g, g_gamma, initial_state=h0, output_final_state=True,
                  block_sizes=block_sizes, interpret=interpret)

    return kernel


@pytest.mark.parametrize("form", ["chunked", "recurrent"])
@pytest.mark.parametrize("packing", [None, "segment_ids", "cu_seqlens"])
def test_kernels_under_x64(rng, form, packing):
    """With jax_enable_x64 on, every kernel, forward and backward, holds only 32-bit values (an
    int64 index ran in interpret mode and failed to compile on the GPU) and lowers for CUDA with
    each gate mode. Interpreted under x64: the dense kernels here (float32, H = 1, K = V = 16),
    the packed ones in PACKED_CASES."""
    dims = (1, 16, 16)

    def case(kind, dtype, interpret):
        if packing is None:
            names, args = _packed(*_inputs(rng, (1, PACKED_T, *dims), "medium", kind, True, dtype))
            kernel = _dense_kernel(form, _packed_blocks(fuse_bwd=kind == "g"), interpret)
            return kernel, _spec, names, args
        return _packed_case(rng, form, packing, kind, "medium", True, dtype, 1,
                            fuse=kind == "g", interpret=interpret, dims=dims)

    with jax.enable_x64(True):
        for kind in ("g", "g_gamma", "none"):
            kernel, _, names, args = case(kind, BF16, interpret=False)
            call = _bind(kernel, names)

            def loss(*a, call=call):
                o, ht = call(*a)
                return jnp.sum(o.astype(F32)) + jnp.sum(ht)

            # value_and_grad: the loss needs the forward output (see test_kernels_lower_for_cuda)
            grad = jax.value_and_grad(loss, argnums=tuple(range(len(args))))
            eqns = list(_pallas_eqns(jax.make_jaxpr(grad)(*args).jaxpr))
            assert len(eqns) >= 3, [e.params["name"] for e in eqns]  # forward and backward
            for eqn in eqns:
                wide = _wide_values(eqn.params["jaxpr"])
                assert not wide, (eqn.params["name"], kind, sorted(wide))
            assert lower_for_cuda(grad, *args).count("__gpu$xla.gpu.triton") == len(eqns)
        if packing is None:
            kernel, spec, names, args = case("both", F32, interpret=None)
            _check(kernel, spec, args, names, F32, rng)


def test_gate_grad_argument():
    """gate_grad=False skips the gate-gradient work (one fused backward launch, no states) and
    returns zeros; None infers it from a traced gate."""
    q = jnp.ones((1, 32, 1, 16), F32)
    g = jnp.full((1, 32, 1), -0.5, F32)
    bs = kernels.BlockSizes(chunk=16, fuse_bwd=True)

    def launches(gate_grad):
        def loss(g):
            o, _ = kernels.simple_gla(q, q, q, g, block_sizes=bs, gate_grad=gate_grad)
            return jnp.sum(o)
        return len(list(_pallas_eqns(jax.make_jaxpr(jax.grad(loss))(g).jaxpr)))

    assert launches(None) == launches(True) == 3  # forward, dq (with the states), dk + dv
    assert launches(False) == 2  # forward, dq + dk + dv


@pytest.mark.parametrize("bad,error,match", [
    (dict(resets=np.zeros((1, 31), bool)), ValueError, "resets.shape"),
    (dict(resets=np.zeros((1, 32), np.float32)), TypeError, "resets.dtype"),
    (dict(resets=np.zeros((1, 32), bool), chunk_docs=np.zeros(2, np.int32), num_docs=1),
     ValueError, "not both"),
    (dict(chunk_docs=np.zeros(3, np.int32), num_docs=1), ValueError, "NT dividing T"),
    (dict(chunk_docs=np.zeros(4, np.int32), num_docs=1), ValueError, "T // NT"),
    (dict(chunk_docs=np.zeros(2, np.int32), num_docs=0), ValueError, "num_docs"),
    (dict(chunk_docs=np.zeros(2, np.float32), num_docs=1), TypeError, "chunk_docs.dtype"),
    (dict(chunk_docs=np.zeros(2, np.int32), num_docs=1, g_gamma=np.float32([-0.1])), ValueError,
     "g_gamma"),
    (dict(chunk_docs=np.zeros(2, np.int32), num_docs=2,
          initial_state=np.zeros((1, 1, 16, 16), np.float32)), ValueError, "initial_state"),
    (dict(chunk_docs=np.zeros(2, np.int32), num_docs=1,
          block_sizes=kernels.BlockSizes(chunk=32)), ValueError, "block_sizes.chunk"),
    (dict(num_docs=2), ValueError, "num_docs"),
])
def test_packing_arguments_validation(bad, error, match):
    q = jnp.ones((1, 32, 1, 16), F32)
    with pytest.raises(error, match=match):
        kernels.simple_gla(q, q, q, **bad)


def test_recurrent_packing_arguments_validation():
    q = jnp.ones((2, 8, 1, 16), F32)
    with pytest.raises(ValueError, match="batch must be 1"):
        kernels.simple_gla_recurrent(q, q, q, docs=np.zeros(8, np.int32), num_docs=1)
    with pytest.raises(ValueError, match="docs.shape"):
        kernels.simple_gla_recurrent(q[:1], q[:1], q[:1], docs=np.zeros(7, np.int32), num_docs=1)
    with pytest.raises(ValueError, match="resets.shape"):
        kernels.simple_gla_recurrent(q, q, q, resets=np.zeros((1, 8), bool))


def _to_torch(torch, x):
    """A JAX array as a CUDA tensor of the same dtype (bf16 goes through exact float32)."""
    t = torch.from_numpy(np.array(jnp.asarray(x, F32))).cuda()
    return t.to(torch.bfloat16) if x.dtype == BF16 else t


@pytest.mark.gpu
@pytest.mark.parametrize("which", ["chunk_lightning_attn", "chunk_simple_gla"])
def test_matches_fla(rng, which):
    """bf16, identical inputs and cotangents: output, final state and every gradient agree with
    FLA's kernels within the bf16 bound (both are also measured against the float64 spec).

    Run on an H100 with fla-core 0.6.0 / Triton 3.6 (2026-11-24), two limits of FLA set the
    regime: `chunk_lightning_attn` returns NaN final states for heads whose decay is around -5
    per step (layer 1 of 12 at H=4; ours matched the spec to 8e-6 there), so the decays here are
    those of layer 10 of 12 (down to -1 per step; the strong-decay regime is held against the
    spec in the tests above); and FLA refuses the gated backward (`chunk_simple_gla` with g) on
    Triton < 3.7.1 on Hopper (its issue #640), in which case the forward is compared and the
    gradients are reported as skipped."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("fla")
    from fla.ops.lightning_attn import chunk_lightning_attn
    from fla.ops.simple_gla import chunk_simple_gla

    B, T, H, K, V = 2, 1000, 4, 128, 128
    layer_idx, num_layers = 10, 12
    q, k, v, _, _, h0 = _inputs(rng, (B, T, H, K, V), "medium", "none", True, BF16)
    # FLA's test gates: logsigmoid(randn) / 16 (anchors.md)
    g = jnp.asarray(jax.nn.log_sigmoid(jnp.asarray(rng.standard_normal((B, T, H)), F32)) / 16)
    do, dht = normal(rng, (B, T, H, V), BF16), normal(rng, (B, H, K, V), F32)

    if which == "chunk_lightning_attn":
        names, args = ["q", "k", "v", "h0"], (q, k, v, h0)

        def ours(q, k, v, h0):
            return ops.lightning_attention(q, k, v, layer_idx=layer_idx, num_layers=num_layers,
                                           decay="fla", initial_state=h0, output_final_state=True,
                                           implementation="pallas")

        def theirs(q, k, v, h0):
            return chunk_lightning_attn(q, k, v, layer_idx, num_layers, initial_state=h0,
                                        output_final_state=True)

        decays = ops.lightning_decay(H, layer_idx, num_layers, "fla")

        def spec(q, k, v, h0):
            return _spec(q, k, v, g=None, g_gamma=jnp.asarray(decays, q.dtype), h0=h0)
    else:
        names, args = ["q", "k", "v", "g", "h0"], (q, k, v, g, h0)

        def ours(q, k, v, g, h0):
            return ops.simple_gla(q, k, v, g, initial_state=h0, output_final_state=True,
                                  implementation="pallas")

        def theirs(q, k, v, g, h0):
            return chunk_simple_gla(q, k, v, g=g, initial_state=h0, output_final_state=True)

        def spec(q, k, v, g, h0):
            return _spec(q, k, v, g=g, g_gamma=None, h0=h0)

    outs, vjp = jax.vjp(jax.jit(ours), *args)
    ours_all = [*outs, *vjp((do, dht))]

    t_args = [_to_torch(torch, x).requires_grad_() for x in args]
    o_t, ht_t = theirs(*t_args)
    loss = (o_t.float() * _to_torch(torch, do).float()).sum() + (ht_t * _to_torch(torch, dht)).sum()
    to_np = lambda t: t.detach().float().cpu().numpy()  # noqa: E731
    theirs_all = [to_np(o_t), to_np(ht_t)]
    fla_backward_refused = None
    try:
        loss.backward()
        theirs_all += [to_np(t.grad) for t in t_args]
    except RuntimeError as e:
        if "Triton" not in str(e):
            raise
        fla_backward_refused = str(e)

    with jax.enable_x64(True):
        args64 = tuple(jnp.asarray(x, jnp.float64) for x in args)
        outs64, vjp64 = jax.vjp(spec, *args64)
        spec_all = [np.asarray(x) for x in (*outs64, *vjp64((jnp.asarray(do, jnp.float64),
                                                            jnp.asarray(dht, jnp.float64))))]

    labels = ["o", "final_state"] + ["d" + n for n in names]
    report = []
    compared = len(theirs_all)  # 2 (the outputs) when FLA refused its backward
    for label, a, b, s in zip(labels[:compared], ours_all[:compared], theirs_all,
                              spec_all[:compared], strict=True):
        report.append(f"{label}: ours-vs-spec {rel_error(a, s):.2e}, fla-vs-spec "
                      f"{rel_error(b, s):.2e}, ours-vs-fla {rel_error(a, b):.2e}")
    print("\n".join(report))
    for label, a, b in zip(labels[:compared], ours_all[:compared], theirs_all, strict=True):
        assert_close(np.asarray(a, np.float32), b, dtype=BF16, name=f"{label} vs FLA ({which})")
    for label, a, s in zip(labels[2:], ours_all[2:], spec_all[2:], strict=True):
        assert_close(np.asarray(a, np.float32), s, dtype=BF16, name=f"{label} vs spec ({which})")
    if fla_backward_refused is not None:
        pytest.skip(f"forward agrees with FLA; FLA refused its backward: {fla_backward_refused}")
