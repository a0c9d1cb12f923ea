"""Selective scan Pallas kernels against the float64 step spec: outputs and every gradient.

Each numerical test runs in Pallas' interpreter (CPU) and has a compiled twin marked `gpu`
(skipped without a GPU); bigger shapes and launch variants run only on the GPU. Run the GPU
twins with `JAXLA_TEST_GPU=1 PYTHONPATH=. python3 -m pytest
tests/kernels/test_selective_scan_kernel.py -m gpu`. Packed documents:
test_selective_scan_packed.py.
"""

import jax
import jax.extend.core as jex
import jax.numpy as jnp
import numpy as np
import pytest

from jaxla import ops
from jaxla.testing import assert_close, outputs_and_grads, random_like
from pallas_kernels._common import lower_for_cuda, next_pow2
from pallas_kernels.selective_scan import MAX_N, BlockSizes, selective_scan
from pallas_kernels.selective_scan.bwd import butterfly_sums
from tests.inputs import selective_scan_inputs

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "h0")
MODES = [pytest.param(True, id="interpret"), pytest.param(False, id="gpu", marks=pytest.mark.gpu)]

# Small blocks so that these shapes have several channel blocks per group, several time chunks
# (the last one partial) in both directions and both backward passes (checkpoint > sub).
SMALL = BlockSizes(block_d=8, chunk=16, unroll=4, checkpoint=8, block_d_bwd=8, chunk_bwd=16,
                   sub=4)
# One-level backward (checkpoint == sub: no sub-chunk buffer) without prefetching; chunks that
# are not powers of two.
FLAT = BlockSizes(block_d=16, unroll=2, chunk=24, checkpoint=8, block_d_bwd=16, chunk_bwd=24,
                  sub=8, prefetch=False)


BLOCKS = {"default": None, "small": SMALL, "flat": FLAT,
          "wide": BlockSizes.get_default(state_size=64)}

# (T, D, N, groups, use_D, use_z, use_bias, softplus, with_h0, blocks): each option on and off,
# T in {1, 63, 65, 300}, N in {4, 12, 16, 64}, D not a multiple of the channel block (24, 40, 48;
# 40 with groups of 10), B/C variable [B, T, N] (groups None) and grouped [B, T, G, N]. The
# default tiles sum dB/dC with lane shuffles (`_channel_sums`) at D = 24, 40, 48 (N = 16, 4).
CASES = [
    (1, 40, 4, None, True, True, True, True, True, "default"),
    (63, 24, 16, None, False, False, False, False, False, "default"),
    (65, 32, 4, 2, True, False, True, True, False, "small"),
    (300, 48, 16, None, True, True, False, True, True, "default"),
    (300, 8, 64, 1, False, True, True, False, True, "wide"),
    (65, 40, 12, 4, True, True, True, True, True, "small"),
    (63, 16, 16, None, True, True, True, True, True, "flat"),
    (300, 24, 4, 2, False, False, True, True, True, "small"),
]


def _case_id(c):
    T, D, N, G, *opts, blocks = c
    flags = "".join(f"-{n}{int(o)}"
                    for n, o in zip(("D", "z", "bias", "sp", "h0"), opts, strict=True))
    return f"T{T}-D{D}-N{N}-G{G}{flags}-{blocks}"


def _fn(impl, opts, *, interpret=None, block_sizes=None):
    """A function of the present arguments returning (out, final_state)."""
    use_D, use_z, use_bias, softplus, with_h0 = opts

    def fn(u, delta, A, Bm, Cm, *rest):
        it = iter(rest)
        D = next(it) if use_D else None
        z = next(it) if use_z else None
        bias = next(it) if use_bias else None
        h0 = next(it) if with_h0 else None
        if impl == "kernel":
            return selective_scan(u, delta, A, Bm, Cm, D, z, delta_bias=bias,
                                  delta_softplus=softplus, initial_state=h0,
                                  block_sizes=block_sizes, interpret=interpret)
        return ops.selective_scan(u, delta, A, Bm, Cm, D, z, delta_bias=bias,
                                  delta_softplus=softplus, initial_state=h0,
                                  output_final_state=True, implementation=impl)

    return fn


def _present(args, opts):
    u, delta, A, Bm, Cm, Dv, z, bias, h0 = args
    names = list(NAMES[:5])
    values = [u, delta, A, Bm, Cm]
    for name, x, on in zip(NAMES[5:], (Dv, z, bias, h0), opts[:3] + opts[4:], strict=True):
        if on:
            names.append(name)
            values.append(x)
    return names, tuple(values)


def _reference(opts, args, outputs, seed):
    """The float64 spec on the upcast inputs, with the cotangents `outputs_and_grads` drew."""
    rng = np.random.default_rng(seed)
    cotangents = jax.tree.map(lambda o: random_like(rng, o), outputs)
    with jax.enable_x64(True):
        up = tuple(jnp.asarray(x, jnp.float64) for x in args)
        ref, vjp = jax.vjp(_fn("naive", opts), *up)
        grads = vjp(jax.tree.map(lambda c: jnp.asarray(c, jnp.float64), cotangents))
    return ref, grads


def check_against_spec(rng, T, D, N, groups, opts, *, dtype, interpret, block_sizes=None,
                       batch=2):
    """Kernel outputs and gradients (random cotangents for out and final state) vs the spec."""
    args = selective_scan_inputs(rng, batch, T, D, N, groups=groups, dtype=dtype)
    check_args(rng, args, opts, interpret=interpret, block_sizes=block_sizes)


def check_args(rng, args, opts, *, interpret, block_sizes=None):
    batch, T, D = args[0].shape
    N, dtype = args[2].shape[1], args[0].dtype
    names, present = _present(args, opts)
    seed = int(rng.integers(1 << 30))
    fn = jax.jit(_fn("kernel", opts, interpret=interpret, block_sizes=block_sizes))
    (out, final), grads = outputs_and_grads(fn, present, np.random.default_rng(seed))
    (out_ref, final_ref), grads_ref = _reference(opts, present, (out, final), seed)
    assert out.dtype == dtype and out.shape == (batch, T, D)
    assert final.dtype == jnp.float32 and final.shape == (batch, D, N)
    # Low-precision inputs: every result is held to the bound of the input dtype.
    bound_dtype = None if dtype == jnp.float32 else dtype
    assert_close(out, out_ref, dtype=bound_dtype, name="out")
    assert_close(final, final_ref, dtype=dtype, name="final_state")
    for name, x, g, g_ref in zip(names, present, grads, grads_ref, strict=True):
        assert g.dtype == x.dtype and g.shape == x.shape, (name, g.dtype, g.shape)
        assert_close(g, g_ref, dtype=dtype, name="d" + name)


@pytest.mark.parametrize("interpret", MODES)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_matches_spec_float32(rng, case, interpret):
    T, D, N, groups, *opts, blocks = case
    check_against_spec(rng, T, D, N, groups, tuple(opts), dtype=jnp.float32,
                       interpret=interpret, block_sizes=BLOCKS[blocks])


@pytest.mark.parametrize("interpret", MODES)
def test_matches_spec_bfloat16(rng, interpret):
    """Mamba's dtypes: bf16 u/delta/z/B/C, float32 A/D/delta_bias/state; grouped B/C."""
    check_against_spec(rng, 130, 32, 16, 2, (True, True, True, True, True), dtype=jnp.bfloat16,
                       interpret=interpret, block_sizes=SMALL)


@pytest.mark.parametrize("interpret", MODES)
def test_matches_spec_under_x64(rng, interpret):
    """float32 inputs with `jax_enable_x64` on: the kernels keep their int32 index arithmetic."""
    with jax.enable_x64(True):
        check_against_spec(rng, 65, 40, 12, 4, (True, True, True, True, True),
                           dtype=jnp.float32, interpret=interpret, block_sizes=SMALL)


@pytest.mark.parametrize("interpret", MODES)
def test_separate_groups_for_B_and_C(rng, interpret):
    """B shared by all channels, C in 4 groups (the kernel expands both to 4 groups)."""
    args = list(selective_scan_inputs(rng, 2, 40, 16, 4, groups=4))
    args[3] = args[3][:, :, 0]
    check_args(rng, tuple(args), (True, True, True, True, True), interpret=interpret,
               block_sizes=SMALL)


@pytest.mark.parametrize("interpret", MODES)
def test_op_dispatches_to_the_kernel(rng, interpret):
    """`ops.selective_scan(implementation="pallas")`: same numbers, final state only on request."""
    u, delta, A, Bm, Cm, Dv, z, bias, h0 = selective_scan_inputs(rng, 2, 33, 16, 16)
    kw = dict(delta_bias=bias, delta_softplus=True, initial_state=h0)
    out, final = ops.selective_scan(u, delta, A, Bm, Cm, Dv, z, implementation="pallas", **kw)
    assert final is None
    ref, ref_final = selective_scan(u, delta, A, Bm, Cm, Dv, z, interpret=interpret, **kw)
    out2, final2 = ops.selective_scan(u, delta, A, Bm, Cm, Dv, z, implementation="pallas",
                                      output_final_state=True, **kw)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))
    np.testing.assert_array_equal(np.asarray(final2), np.asarray(ref_final))
    xla, _ = ops.selective_scan(u, delta, A, Bm, Cm, Dv, z, implementation="xla", **kw)
    assert_close(out, xla, name="pallas vs xla")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_mamba_370m_layer_shape(rng, dtype):
    """The benchmark layer (D=2048, N=16, B/C shared, z, D, delta_bias, softplus) at T=1024."""
    check_against_spec(rng, 1024, 2048, 16, None, (True, True, True, True, True), dtype=dtype,
                       interpret=False, batch=2)


@pytest.mark.gpu
@pytest.mark.parametrize("bs", [
    BlockSizes.get_default(state_size=16, chunk=1 << 20, chunk_bwd=1 << 20),
    BlockSizes.get_default(state_size=16, sub=4, checkpoint=16, chunk=64, chunk_bwd=256),
    BlockSizes.get_default(state_size=16, num_warps=1, block_d=128, unroll=2, prefetch=True,
                           num_warps_bwd=2, block_d_bwd=64, sub=2, checkpoint=8),
    BlockSizes.get_default(state_size=16, num_warps=4, block_d=512, unroll=8, sub=8, checkpoint=8,
                           num_stages=2, num_stages_bwd=2),
], ids=["one-chunk", "s4-c16-fc64-cb256", "fw1-u2-pf-bw2-s2", "fw4-u8-s8-stages2"])
def test_block_variants_on_gpu(rng, bs):
    """Launch variants the tuning script tries, at a GPU-sized shape with 4 groups."""
    check_against_spec(rng, 777, 512, 16, 4, (True, True, True, True, True), dtype=jnp.bfloat16,
                       interpret=False, block_sizes=bs)


@pytest.mark.gpu
def test_large_state_on_gpu(rng):
    check_against_spec(rng, 500, 256, 64, 2, (True, True, True, True, True), dtype=jnp.float32,
                       interpret=False)


def test_block_sizes_validation():
    with pytest.raises(ValueError, match="block_d must be a power of two"):
        BlockSizes(block_d=24)
    with pytest.raises(ValueError, match="checkpoint must be a multiple of unroll and sub"):
        BlockSizes(checkpoint=8, sub=16)
    with pytest.raises(ValueError, match="chunk must be a multiple of unroll"):
        BlockSizes(chunk=30, unroll=4)
    with pytest.raises(ValueError, match="chunk_bwd must be a multiple of checkpoint"):
        BlockSizes(chunk_bwd=100, checkpoint=64)
    with pytest.raises(ValueError, match="num_warps must be a power of two"):
        BlockSizes(num_warps=3)
    with pytest.raises(ValueError, match="state size N must be in"):
        BlockSizes.get_default(state_size=MAX_N + 1)
    wide = BlockSizes.get_default(state_size=64)  # at most 64 forward state elements per thread
    assert wide.block_d * 64 <= 64 * 32 * wide.num_warps and wide.sub * 64 <= 64


@pytest.mark.parametrize("shape, chunk, chunk_bwd", [
    ((4, 1024, 2048), 64, 64),  # 32 forward blocks x 16 chunks = 512 programs
    ((4, 2048, 2048), 128, 128),  # 256 backward blocks x 16 = 4096
    ((4, 4096, 2048), 256, 256),
    ((4, 8192, 2048), 512, 256),
    ((4, 32768, 2048), 512, 256),  # no chunk past the longest
    ((1, 300, 48), 64, 64),  # too few programs at any chunk: the shortest
])
def test_default_chunks_follow_the_shape(shape, chunk, chunk_bwd):
    """The longest chunks that leave a wave of programs (config._FWD/_BWD_MIN_PROGRAMS)."""
    dims = dict(state_size=16, batch=shape[0], seq_len=shape[1], channels=shape[2])
    bs = BlockSizes.get_default(**dims)
    assert (bs.chunk, bs.chunk_bwd) == (chunk, chunk_bwd)
    assert BlockSizes.get_default(**dims, chunk=32).chunk == 32  # overrides win
    assert BlockSizes.get_default(**dims, chunk_bwd=64).chunk_bwd == 64
    # only chunks the other fields allow: chunk_bwd a multiple of checkpoint
    assert BlockSizes.get_default(**dims, checkpoint=256).chunk_bwd == 256
    assert BlockSizes.get_default(state_size=16) == BlockSizes.get_default(
        state_size=16, chunk=64, chunk_bwd=256)


def test_unsupported_inputs_raise(rng):
    u, delta, A, Bm, Cm, *_ = selective_scan_inputs(rng, 1, 4, 8, 4)
    big = jnp.ones((8, MAX_N + 1), jnp.float32)
    bc = jnp.ones((1, 4, MAX_N + 1), jnp.float32)
    with pytest.raises(ValueError, match=r"N <= 256, got N=257; use implementation='xla'"):
        ops.selective_scan(u, delta, -big, bc, bc, implementation="pallas")
    with jax.enable_x64(True):
        up = [jnp.asarray(x, jnp.float64) for x in (u, delta, A, Bm, Cm)]
        with pytest.raises(ValueError, match="got float64; use implementation='xla'"):
            ops.selective_scan(*up, implementation="pallas")
        with pytest.raises(TypeError, match="float64"):  # the kernel entry point itself
            selective_scan(*up)


LOWERING = [
    # (B, T, D, N, groups, dtype, block sizes, with the optional inputs, packing, x64)
    (4, 4096, 2048, 16, None, jnp.bfloat16, None, True, None, False),
    (2, 65, 40, 12, 4, jnp.float32, SMALL, True, None, False),
    (2, 300, 64, 64, None, jnp.float32, None, True, None, False),
    (2, 63, 32, 16, 2, jnp.bfloat16, FLAT, True, None, False),
    (2, 100, 32, 16, None, jnp.float32, None, False, None, False),
    (4, 4096, 2048, 16, None, jnp.bfloat16, None, True, None, True),
    (2, 65, 40, 12, 4, jnp.float32, SMALL, True, None, True),
    # packed documents: resets (segment_ids) and per-document mode (docs, cu_seqlens)
    (2, 4096, 2048, 16, None, jnp.bfloat16, None, True, "resets", True),
    (1, 4096, 2048, 16, None, jnp.bfloat16, None, True, "docs", True),
    (2, 65, 40, 12, 4, jnp.float32, SMALL, True, "resets", True),
    (1, 63, 32, 16, 2, jnp.bfloat16, FLAT, True, "docs", True),
    (1, 100, 32, 16, None, jnp.float32, None, False, "docs", True),
    (2, 300, 64, 64, None, jnp.float32, None, False, "resets", False),
]
NUM_DOCS = 5


def _lowering_id(c):
    return (f"B{c[0]}-T{c[1]}-D{c[2]}-N{c[3]}-G{c[4]}-opt{int(c[7])}"
            + (f"-{c[8]}" if c[8] else "") + ("-x64" if c[9] else ""))


def _computed_dtypes(jaxpr) -> set:
    """The dtypes of every value computed inside the `pallas_call` bodies of `jaxpr` (equation
    outputs, loop counters included; weak-typed Python constants are converted where used)."""
    found = set()

    def subjaxprs(eqn):
        for p in eqn.params.values():
            for x in p if isinstance(p, tuple | list) else (p,):
                if isinstance(x, jex.ClosedJaxpr):
                    yield x.jaxpr
                elif isinstance(x, jex.Jaxpr):
                    yield x

    def walk(jaxpr, inside):
        for eqn in jaxpr.eqns:
            if inside:
                found.update(v.aval.dtype for v in eqn.outvars if hasattr(v.aval, "dtype"))
            for sub in subjaxprs(eqn):
                walk(sub, inside or eqn.primitive.name == "pallas_call")

    walk(jaxpr.jaxpr, False)
    return found


@pytest.mark.parametrize("case", LOWERING, ids=_lowering_id)
def test_kernels_lower_for_cuda(case):
    """Forward and backward lower through Pallas-Triton for an H100 (no GPU needed), dense and
    packed, also under `jax_enable_x64` (where the kernels' index arithmetic stays int32)."""
    batch, T, D, N, groups, dtype, bs, optional, packing, x64 = case
    with jax.enable_x64(x64):
        _check_lowering(batch, T, D, N, groups, dtype, bs, optional, packing, x64)


def _check_lowering(batch, T, D, N, groups, dtype, bs, optional, packing, x64):
    bc = (batch, T, N) if groups is None else (batch, T, groups, N)
    states = NUM_DOCS if packing == "docs" else batch
    shapes = [((batch, T, D), dtype), ((batch, T, D), dtype), ((D, N), jnp.float32),
              (bc, dtype), (bc, dtype), ((D,), jnp.float32), ((batch, T, D), dtype),
              ((D,), jnp.float32), ((states, D, N), jnp.float32)]
    args = tuple(jax.ShapeDtypeStruct(s, d) for s, d in shapes)
    if not optional:  # no D, z, delta_bias, initial state, softplus
        args = args[:5]
    if packing == "resets":
        args += (jax.ShapeDtypeStruct((batch, T), jnp.bool_),)
    elif packing == "docs":
        args += (jax.ShapeDtypeStruct((T,), jnp.int32),)

    def fwd(*args):
        n = 9 if optional else 5
        rest = args[5:n] if optional else (None,) * 4
        kw = {}
        if packing == "resets":
            kw = dict(resets=args[n])
        elif packing == "docs":
            kw = dict(docs=args[n], num_docs=NUM_DOCS)
        return selective_scan(*args[:5], rest[0], rest[1], delta_bias=rest[2],
                              delta_softplus=optional, initial_state=rest[3], block_sizes=bs,
                              interpret=False, **kw)

    def fwd_bwd(*args):
        n = len(args) - (packing is not None)
        outs, vjp = jax.vjp(lambda *x: fwd(*x, *args[n:]), *args[:n])
        return vjp(outs)

    # The chunk-state passes run only when there is more than one time chunk.
    dims = dict(state_size=N, batch=batch, seq_len=T, channels=D, groups=groups or 1)
    blocks = (bs or BlockSizes.get_default(**dims)).for_call(**dims)  # what the op picks
    fwd_names = ["selective_scan_fwd"] + ["selective_scan_fwd_states",
                                          "selective_scan_fwd_carry"] * (T > blocks.chunk)
    bwd_names = ["selective_scan_bwd"] + ["selective_scan_bwd_states"] * (T > blocks.chunk_bwd)
    text = lower_for_cuda(fwd, *args)
    assert text.count("__gpu$xla.gpu.triton") == len(fwd_names)
    text = lower_for_cuda(fwd_bwd, *args)
    assert text.count("__gpu$xla.gpu.triton") == len(fwd_names) + len(bwd_names)
    for name in fwd_names + bwd_names:
        assert f'name = "{name}"' in text, name
    # Every decay is PTX's one-instruction exp2 (libdevice's exp2f adds subnormal handling).
    assert "__nv_exp2f" not in text
    assert text.count("ex2.approx.ftz.f32") >= len(fwd_names) + len(bwd_names)
    # Multiply-adds are single-rounding fmas (Triton leaves a * b + c as two instructions).
    assert text.count("fma.rn.f32") >= len(fwd_names) + len(bwd_names)
    # The backward's channel sums are lane shuffles where one warp holds 32 channels.
    Np = next_pow2(N)
    butterfly = butterfly_sums(Np, blocks.block_d_bwd, blocks.num_warps_bwd)
    assert ("shfl.sync.bfly.b32" in text) == butterfly
    # Index arithmetic in the kernels is int32 (a Python int is int64 under x64).
    dtypes = _computed_dtypes(jax.make_jaxpr(fwd_bwd)(*args))
    assert jnp.dtype(jnp.int64) not in dtypes and jnp.dtype(jnp.float64) not in dtypes, dtypes
