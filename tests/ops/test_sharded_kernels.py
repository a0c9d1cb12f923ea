"""Under a mesh, the Pallas kernels run per device on their batch slice and match one device."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxla import ops
from jaxla.testing import assert_close, random_like

B, T, H, K, V, D, N = 8, 24, 2, 16, 16, 16, 4
needs_8 = pytest.mark.skipif(len(jax.devices()) < 8,
                             reason="needs 8 devices (tests/conftest.py fakes them)")


def _cases(rng):
    def normal(*shape):
        return jnp.asarray(rng.standard_normal(shape), jnp.float32)

    logsig = lambda x: jax.nn.log_sigmoid(x)  # noqa: E731
    gla_args = (normal(B, T, H, K), normal(B, T, H, K), normal(B, T, H, V),
                logsig(normal(B, T, H, K)), normal(B, H, K, V))
    return {
        "gla": (lambda q, k, v, g, h0: ops.gla(
            q, k, v, g, initial_state=h0, output_final_state=True, chunk_size=16,
            implementation="pallas"), gla_args),
        "gla_recurrent": (lambda q, k, v, g, h0: ops.gla_recurrent(
            q, k, v, g, initial_state=h0, output_final_state=True,
            implementation="pallas"), gla_args),
        # A numpy constant decay (as lightning attention passes) stays a closed-over constant.
        "simple_gla": (lambda q, k, v, g, h0: ops.simple_gla(
            q, k, v, g[..., 0], g_gamma=-np.linspace(0.1, 1.0, H, dtype=np.float32),
            initial_state=h0, output_final_state=True, chunk_size=16,
            implementation="pallas"), gla_args),
        "selective_scan": (lambda u, dt, Bm, Cm, z, A, Dv: ops.selective_scan(
            u, dt, A, Bm, Cm, Dv, z, delta_softplus=True, output_final_state=True,
            implementation="pallas"),
            (normal(B, T, D), normal(B, T, D), normal(B, T, N), normal(B, T, N), normal(B, T, D),
             -jnp.exp(normal(D, N)), normal(D))),
    }


@needs_8
@pytest.mark.parametrize("op", ["gla", "gla_recurrent", "simple_gla", "selective_scan"])
def test_kernel_under_a_mesh_runs_per_batch_shard_and_matches(op, rng):
    fn, args = _cases(rng)[op]
    outputs = jax.eval_shape(fn, *args)
    cotangents = jax.tree.map(lambda o: random_like(rng, o), outputs)

    def loss(*args):
        out = fn(*args)
        pairs = zip(jax.tree.leaves(out), jax.tree.leaves(cotangents), strict=True)
        return sum(jnp.vdot(o, c) for o, c in pairs)

    step = jax.jit(jax.value_and_grad(loss, argnums=tuple(range(len(args)))))
    want_loss, want_grads = step(*args)

    mesh = jax.make_mesh((2, 4), ("data", "fsdp"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    batch = NamedSharding(mesh, P(("data", "fsdp")))
    # Arrays with a batch axis of size B are split over all 8 devices; the rest are replicated.
    placed = [jax.device_put(a, batch if a.shape[0] == B and a.ndim > 2 else NamedSharding(mesh, P()))
              for a in args]
    with jax.set_mesh(mesh):
        jaxpr = str(jax.make_jaxpr(step)(*placed))
        got_loss, got_grads = step(*placed)
    assert "shard_map" in jaxpr
    # The loss sums ~1e4 products of both signs in another order on 8 devices: its rounding
    # scales with the sum of their magnitudes, not with the (cancelled) result.
    out = fn(*args)
    magnitude = sum(float(jnp.sum(jnp.abs(o * c))) for o, c in zip(
        jax.tree.leaves(out), jax.tree.leaves(cotangents), strict=True))
    assert_close(got_loss, want_loss, name=f"{op} loss", floor=1e-6 * magnitude)
    for i, (g, w) in enumerate(zip(got_grads, want_grads, strict=True)):
        assert_close(g, w, name=f"{op} grad {i}")
