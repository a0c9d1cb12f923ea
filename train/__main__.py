"""Placeholder until the training program lands: a short demo of jaxla's ops.

It runs each op's chunked XLA path against its step-by-step spec on random inputs and prints the
error and the time of each. The real `python -m train` (models, optax, checkpoints) replaces this.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxla import ops
from jaxla.testing import rel_error


def _timed(fn, *args):
    fn(*args)[0].block_until_ready()
    start = time.perf_counter()
    out = fn(*args)
    out[0].block_until_ready()
    return out, (time.perf_counter() - start) * 1e3


def main():
    print("jaxla: python -m train is not implemented yet; running a demo of the ops instead.")
    print(f"jax {jax.__version__} on {jax.default_backend()}")
    rng = np.random.default_rng(0)
    B, T, H, K, V = 2, 512, 4, 64, 64
    q, k = (jnp.asarray(rng.standard_normal((B, T, H, K)), jnp.float32) for _ in range(2))
    v = jnp.asarray(rng.standard_normal((B, T, H, V)), jnp.float32)
    g = jax.nn.log_sigmoid(jnp.asarray(rng.standard_normal((B, T, H, K)), jnp.float32)) / 16
    u = jnp.asarray(rng.standard_normal((B, T, 256)), jnp.float32)
    delta = jnp.asarray(rng.uniform(0, 0.5, (B, T, 256)), jnp.float32)
    A = -jnp.tile(jnp.arange(1, 17, dtype=jnp.float32), (256, 1))
    Bm, Cm = (jnp.asarray(rng.standard_normal((B, T, 16)), jnp.float32) for _ in range(2))
    cases = {
        "gla": lambda impl: jax.jit(lambda *a: ops.gla(*a, implementation=impl)),
        "lightning_attention": lambda impl: jax.jit(
            lambda q, k, v, g: ops.lightning_attention(q, k, v, layer_idx=0, num_layers=12, implementation=impl)),
        "selective_scan": lambda impl: jax.jit(
            lambda *a: ops.selective_scan(u, delta, A, Bm, Cm, implementation=impl)),
    }
    print(f"{'op':<22}{'xla ms':>10}{'naive ms':>10}{'rel. error':>12}")
    for name, make in cases.items():
        (o_x, _), t_x = _timed(make("xla"), q, k, v, g)
        (o_n, _), t_n = _timed(make("naive"), q, k, v, g)
        print(f"{name:<22}{t_x:>10.2f}{t_n:>10.2f}{rel_error(o_x, o_n):>12.2e}")


if __name__ == "__main__":
    main()
