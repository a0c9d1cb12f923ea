"""Packed documents: every op and implementation equals its documents run one by one."""

import jax.numpy as jnp
import pytest

from tests.ops.harness import IMPLEMENTATIONS, OPS, check_packed


@pytest.mark.parametrize("kind", ["segment_ids", "cu_seqlens"])
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("op", list(OPS))
def test_packed_equals_documents_one_by_one(rng, op, implementation, kind):
    check_packed(op, implementation, rng, kind=kind)


@pytest.mark.parametrize("kind", ["segment_ids", "cu_seqlens"])
@pytest.mark.parametrize("op", list(OPS))
def test_packed_spec_float64(x64, rng, op, kind):
    check_packed(op, "xla", rng, kind=kind, dtype=jnp.float64)
