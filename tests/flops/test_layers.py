"""The real `jaxla.layers` (implementation="xla", built under `nnx.eval_shape`) measured by XLA
against the layer formulas: forward passes (recurrent and chunked), decode steps and prefills
through the layers' caches, the recurrent-form switch, SwiGLU and RMSNorm.

Lowered counts are the primary number (see `jaxla.flops.report.count`). The formulas describe these
layers op for op, so the lowered count must equal the formula up to what is stated per test:
XLA's way of counting an einsum's broadcast products (GLA's chunked path, computed exactly),
and a few FLOPs per call of mask building and loop and index bookkeeping (bounded).
"""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from jaxla.flops import formulas as F
from jaxla.flops import xla
from jaxla.flops.report import programs as P
from jaxla.flops.report import walker
from jaxla.layers import RMSNorm, SwiGLU
from jaxla.layers._common import RECURRENT_MAX_LEN
from jaxla.models.config import LMConfig
from tests.flops.expected import CHUNK, bookkeeping, einsum_excess, within

S = jax.ShapeDtypeStruct
# One block of each mixer: lightning, gla, mamba, attention (grouped KV heads: 4 query, 2 KV).
HYBRID = LMConfig.tiny("hybrid", hidden_size=64, num_heads=4, num_kv_heads=2)
KINDS = {kind: i for i, kind in enumerate(HYBRID.mixers)}


def _configs(kind):
    """The hybrid's block plus the layer options that change the count."""
    out = [(HYBRID, KINDS[kind])]
    if kind == "gla":
        out.append((HYBRID.replace(use_short_conv=True), KINDS[kind]))
    if kind == "lightning":  # FLA's decay convention scales q by d_h^-0.5; MiniMax's does not
        out.append((HYBRID.replace(lightning_decay="fla"), KINDS[kind]))
    return out


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("form", ["recurrent", "chunked"])
def test_layer_forward_matches_formula(rng, kind, form):
    B = int(rng.integers(1, 3))
    # <= 64 tokens: GLA and Lightning run their recurrent op; longer (and not a chunk multiple):
    # the chunked XLA path with padding. Mamba and attention have one path.
    T = int(rng.integers(16, 65)) if form == "recurrent" else int(rng.integers(100, 190))
    for cfg, idx in _configs(kind):
        fn, args = P.mixer_program(cfg, idx, B, T)
        # Compiled counts of the associative scan are fusion artefacts (the report shows them):
        # Mamba is checked lowered only.
        stages = ("lowered",) if kind == "mamba" else xla.STAGES
        counts = walker.count_all(fn, *args, stages=stages)
        f = F.mixer_layer(kind, cfg, B, T, conventions=F.XLA_PATH)
        lo = counts["lowered"]
        expected = f.total + einsum_excess(cfg, B, T, kind)
        assert within(lo.flops, expected, expected + bookkeeping(kind, T)), (kind, cfg, B, T)
        assert lo.transcendentals == f.transcendentals, (kind, cfg, B, T)
        if "compiled" in counts:
            # After fusion: broadcast products are 1 FLOP (no einsum excess), and fusion may
            # duplicate cheap producers (gates, norms, masks): within 1.5% here.
            assert counts["compiled"].flops == pytest.approx(f.total, rel=0.015), (kind, B, T)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_decode_step_and_prefill_through_the_cache(rng, kind):
    B = int(rng.integers(1, 3))
    S_len = int(rng.integers(8, 40))  # the cache's slots (a KV cache is preallocated)
    position = int(rng.integers(1, S_len + 1))
    for cfg, idx in _configs(kind):
        fn, args = P.mixer_program(cfg, idx, B, 1, cache_len=S_len)
        c = walker.count(fn, *args)
        # A step costs the same at any position: the KV cache reads all its slots, masked.
        f = F.mixer_step(kind, cfg, B, position, cache_len=S_len)
        assert within(c.flops, f.total, f.total + 8), (kind, cfg, B, S_len)
        assert c.transcendentals == f.transcendentals
        # A prefill of T > 1 tokens through the cache (Mamba: the scan with an initial state).
        T = int(rng.integers(2, S_len + 1))
        fn, args = P.mixer_program(cfg, idx, B, T, cache_len=S_len)
        c = walker.count(fn, *args)
        f = F.mixer_layer(kind, cfg, B, T, conventions=F.XLA_PATH, cache_len=S_len)
        assert within(c.flops, f.total, f.total + bookkeeping(kind, T)), (kind, cfg, B, T)
        assert c.transcendentals == f.transcendentals
    if kind == "attention":  # the exact KV cache reads only the `position` keys that exist
        exact = F.mixer_step(kind, HYBRID, B, position)
        assert exact.total < F.mixer_step(kind, HYBRID, B, position, cache_len=S_len).total or (
            position == S_len)


@pytest.mark.parametrize("kind", ["gla", "lightning"])
def test_recurrent_switch_matches_the_layers(kind):
    # FLA's switch, followed by jaxla's layers and assumed by the formulas: T <= 64 runs the
    # recurrent op (a scan over T steps), T > 64 the chunked one (a scan over the chunks).
    assert F.Conventions().recurrent_max_len == RECURRENT_MAX_LEN == CHUNK
    for T, trips in ((RECURRENT_MAX_LEN, RECURRENT_MAX_LEN), (RECURRENT_MAX_LEN + 1, 2)):
        fn, args = P.mixer_program(HYBRID, KINDS[kind], 1, T)
        c = walker.count(fn, *args)
        assert [lp.trip_count for lp in c.loops] == [trips]
        f = F.mixer_layer(kind, HYBRID, 1, T, conventions=F.XLA_PATH)
        expected = f.total + einsum_excess(HYBRID, 1, T, kind)
        assert within(c.flops, expected, expected + bookkeeping(kind, T))


@pytest.mark.parametrize("stage", xla.STAGES)
def test_swiglu_and_rmsnorm_modules_exact(rng, stage):
    t, D, Fm = int(rng.integers(8, 100)), int(rng.integers(8, 96)), int(rng.integers(16, 300))
    x = S((2, t, D), jnp.float32)
    fn, args = P.module_program(lambda: SwiGLU(D, Fm, rngs=nnx.Rngs(0)), x)
    c = walker.count(fn, *args, stage=stage)
    f = F.swiglu_mlp(2 * t, D, Fm)
    assert (c.flops, c.transcendentals) == (f.total, f.transcendentals)
    if stage == "lowered":  # compiled XLA may duplicate the norm's producers into two fusions
        fn, args = P.module_program(lambda: RMSNorm(D), x)
        c = walker.count(fn, *args, stage=stage)
        f = F.rmsnorm(2 * t, D)
        assert (c.flops, c.transcendentals) == (f.total, f.transcendentals)
