"""Every op and implementation against the float64 spec, dense and with packed documents.

One harness (`tests/ops/harness.py`) for all ops: a call equals its documents run one by one
through the spec, outputs, final states and every gradient. The kernels' own tilings, gate
regimes and limits are in tests/kernels/.
"""

import jax.numpy as jnp
import pytest

from tests.ops.harness import IMPLEMENTATIONS, OPS, check_against_spec

KINDS = ["dense", "segment_ids", "cu_seqlens"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("op", list(OPS))
def test_matches_documents_one_by_one(rng, op, implementation, kind):
    if implementation == "naive" and kind == "dense":
        pytest.skip("the spec itself: nothing to compare")
    check_against_spec(op, implementation, rng, kind=kind)


@pytest.mark.parametrize("dtype", [jnp.bfloat16], ids=["bf16"])
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS[1:])
@pytest.mark.parametrize("op", ["gla", "simple_gla", "selective_scan"])
def test_bfloat16_packed(rng, op, implementation, dtype):
    check_against_spec(op, implementation, rng, kind="segment_ids", dtype=dtype)


@pytest.mark.parametrize("kind", KINDS[1:])
@pytest.mark.parametrize("op", list(OPS))
def test_spec_float64(x64, rng, op, kind):
    """Under x64 with float64 inputs: the chunked path against the spec at float64 precision,
    packed (each op's file holds its dense calls to float64 over shapes and gate regimes)."""
    check_against_spec(op, "xla", rng, kind=kind, dtype=jnp.float64)
