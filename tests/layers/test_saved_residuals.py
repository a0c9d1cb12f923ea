"""What a block keeps for its backward pass (`jax.ad_checkpoint.print_saved_residuals`).

At gla_340m's B=8, T=2048 every `[B, T, width]` activation a layer saves costs 16-88 MiB, times
24 layers: the recomputed chains must keep their float32 intermediates and the products that
only feed a matmul's weight gradient out of memory (benchmarks/RESULTS.md, "What a gla_340m
layer keeps for the backward")."""

import re

import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from jax.ad_checkpoint import print_saved_residuals

from jaxla.models.config import LMConfig
from jaxla.models.lm import Block


def _saved_shapes(config, B, T, capsys):
    """`[(dtype, shape)]` of the residuals one block's backward keeps."""
    block = Block(config, 0, rngs=nnx.Rngs(0), implementation=config.implementation)
    graphdef, state = nnx.split(block)
    x = jax.random.normal(jax.random.key(0), (B, T, config.hidden_size), jnp.bfloat16)

    def loss(state, x):
        return nnx.merge(graphdef, state)(x).astype(jnp.float32).sum()

    capsys.readouterr()
    print_saved_residuals(loss, state, x)
    saved = []
    for line in capsys.readouterr().out.splitlines():
        m = re.match(r"\s*(\w+)\[([\d,]*)\]", line)
        if m:
            saved.append((m.group(1), tuple(int(d) for d in m.group(2).split(",") if d)))
    assert saved, "print_saved_residuals printed nothing"
    return saved


@pytest.mark.parametrize("implementation", ["xla", "pallas"])
def test_gla_block_saves_no_gate_activations_or_swiglu_product(implementation, capsys):
    B, T = 2, 96  # > 64: the chunked op
    config = LMConfig.tiny("gla", dtype="bfloat16", param_dtype="bfloat16", intermediate_size=96,
                           implementation=implementation)
    saved = _saved_shapes(config, B, T, capsys)
    # SwiGLU: gate and up (the product is recomputed for the down projection's weight gradient).
    assert saved.count(("bf16", (B, T, 96))) == 2, saved
    # The gates: the bf16 logits, not float32 log-sigmoid activations.
    assert ("bf16", (B, T, config.key_dim)) in saved, saved
    assert ("f32", (B, T, config.key_dim)) not in saved, saved


@pytest.mark.parametrize("kind, implementation, sizes", [
    ("gla", "xla", dict(expand_v=2)),
    ("gla", "pallas", dict(expand_v=2)),
    ("lightning", "xla", dict(head_dim=16)),
    ("mamba", "xla", dict(mlp=True)),
    ("attention", "xla", dict(head_dim=16)),
    ("attention", "xla", dict(head_dim=16, num_experts=4)),
])
def test_block_saves_its_inputs_not_the_norm_outputs(kind, implementation, sizes, capsys):
    # The projections after each norm read its output for their weight gradients; the backward
    # recomputes it from the block's input (mixer branch) and the mixer's residual sum (MLP
    # branch), which it keeps anyway. Widths other than D = 64 (value_dim 128, heads 2 x 16, an
    # MLP of 96), so that the block's [B, T, D] activations are those two alone.
    B, T = 2, 96  # > 64: the chunked op
    config = LMConfig.tiny(kind, dtype="bfloat16", param_dtype="bfloat16", intermediate_size=96,
                           implementation=implementation, **sizes)
    saved = _saved_shapes(config, B, T, capsys)
    assert saved.count(("bf16", (B, T, config.hidden_size))) == 2, saved


def test_moe_block_saves_its_expert_projections_in_the_compute_dtype(capsys):
    """A MoE MLP keeps gate and up per expert in bf16, as SwiGLU does: no float32 `[B, T, E, I]`
    activation (silu, the routed product) is saved; the backward recomputes them."""
    B, T, E, inner = 2, 96, 4, 96
    config = LMConfig.tiny("attention", dtype="bfloat16", param_dtype="bfloat16", head_dim=16,
                           intermediate_size=inner, num_experts=E, implementation="xla")
    saved = _saved_shapes(config, B, T, capsys)
    assert saved.count(("bf16", (B, T, E, inner))) == 2, saved
    assert not [s for s in saved if s[1] == (B, T, E, inner) and s[0] != "bf16"], saved
