"""One BlockSizes interface for every kernel package (pallas_kernels/__init__.py): defaults for
one call's dims, `for_call` fitting any sizes to that call, overrides, validation."""

import dataclasses

import jax.numpy as jnp
import pytest

from pallas_kernels import gla, selective_scan, simple_gla
from pallas_kernels._common import next_pow2, padded_dim

# package, the dims of two calls (one with dims that pad), a field to override and its value
CASES = {
    "gla": (gla, [dict(head_dim_k=128, head_dim_v=256, seq_len=4096),
                  dict(head_dim_k=40, head_dim_v=10, seq_len=7)], "block_k", 16),
    "simple_gla": (simple_gla, [dict(head_dim_k=128, head_dim_v=128, dtype=jnp.bfloat16),
                                dict(head_dim_k=100, head_dim_v=12, dtype=jnp.float32)],
                   "block_v", 16),
    "selective_scan": (selective_scan,
                       [dict(state_size=16, batch=4, seq_len=4096, channels=2048, groups=1),
                        dict(state_size=12, batch=1, seq_len=33, channels=40, groups=4)],
                       "unroll", 2),
}


@pytest.mark.parametrize("name", CASES)
def test_defaults_fit_the_call_and_overrides_win(name):
    package, calls, field, value = CASES[name]
    for dims in calls:
        default = package.BlockSizes.get_default(**dims)
        fitted = default.for_call(**dims)
        assert isinstance(fitted, package.BlockSizes)
        assert fitted.for_call(**dims) == fitted  # idempotent: the entry points apply it again
        assert getattr(package.BlockSizes.get_default(**dims, **{field: value}), field) == value
        assert package.unsupported(**_inputs(name, dims)) is None
    with pytest.raises(TypeError):  # dims are keywords, named the same in both methods
        package.BlockSizes.get_default(*calls[0].values())


@pytest.mark.parametrize("name", CASES)
def test_for_call_clips_tiles_to_the_padded_dims(name):
    package, calls, _, _ = CASES[name]
    dims = calls[1]  # the small call
    wide = package.BlockSizes()  # the dataclass defaults, wider than this call
    fitted = wide.for_call(**dims)
    tiles = [f.name for f in dataclasses.fields(fitted) if f.name.startswith("block_")]
    assert tiles
    if name == "selective_scan":
        limit = next_pow2(dims["channels"] // dims["groups"])
        assert all(getattr(fitted, t) <= limit for t in ("block_d", "block_d_carry",
                                                         "block_d_bwd"))
    else:  # tiles along K are named block_k*, tiles along V block_v*
        K, V = padded_dim(dims["head_dim_k"]), padded_dim(dims["head_dim_v"])
        for tile in tiles:
            assert getattr(fitted, tile) == min(getattr(wide, tile),
                                                K if tile.startswith("block_k") else V), tile
    if name == "gla":  # and the chunk to the sequence (at least 16)
        assert fitted.chunk == max(16, next_pow2(dims["seq_len"])) < wide.chunk


@pytest.mark.parametrize("name", CASES)
def test_invalid_sizes_are_refused_when_built(name):
    package = CASES[name][0]
    with pytest.raises(ValueError, match="power of two"):
        package.BlockSizes(num_warps_bwd=3)


def _inputs(name, dims):
    """The keyword arguments of the package's `unsupported` for one call's dims."""
    if name == "selective_scan":
        return dict(state_size=dims["state_size"], dtype=jnp.float32)
    return dict(head_dim_k=dims["head_dim_k"], head_dim_v=dims["head_dim_v"],
                dtype=dims.get("dtype", jnp.bfloat16))
