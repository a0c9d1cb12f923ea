"""One-shot check of the GPU machine: versions, Pallas-Triton compile, cuDNN attention, FLA import."""

import time

import jax
import jax.numpy as jnp

print("jax", jax.__version__, jax.devices())
from jax.experimental import pallas as pl  # noqa: E402


def add_one(x_ref, o_ref):
    o_ref[...] = x_ref[...] + 1.0


x = jnp.arange(1024, dtype=jnp.float32).reshape(32, 32)
y = pl.pallas_call(add_one, out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype))(x)
print("pallas ok", bool(jnp.all(y == x + 1)))
q = jax.random.normal(jax.random.key(0), (4, 4096, 16, 128), jnp.bfloat16)
f = jax.jit(lambda q: jax.nn.dot_product_attention(q, q, q, is_causal=True, implementation="cudnn"))
f(q).block_until_ready()
t = time.perf_counter()
for _ in range(20):
    out = f(q)
out.block_until_ready()
print("cudnn causal fwd ms", (time.perf_counter() - t) / 20 * 1e3)
try:
    import torch
    from fla.ops.gla import chunk_gla
    from triton.testing import do_bench

    qt = torch.randn(4, 4096, 16, 128, device="cuda", dtype=torch.bfloat16)
    gt = torch.nn.functional.logsigmoid(torch.randn(4, 4096, 16, 128, device="cuda")) / 16
    print("fla chunk_gla fwd ms", do_bench(lambda: chunk_gla(qt, qt, qt, gt), quantiles=[0.5]))
except Exception as e:  # noqa: BLE001
    print("FLA failed:", repr(e))
