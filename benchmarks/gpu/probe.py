"""One-shot check of a GPU machine before a benchmark call: versions, a Pallas-Triton kernel
compiles and runs, cuDNN attention runs, and which anchors import (jla, FLA, mamba_ssm). One line
each; it times nothing (`python -m benchmarks.kernels` does, with every anchor that imports).

    PYTHONPATH=/tmp/site:. python3 -m benchmarks.gpu.probe     (after benchmarks/gpu/fla_env.sh)
"""

import importlib

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl


def check(name, fn):
    try:
        print(f"{name}: ok {fn() or ''}".rstrip(), flush=True)
    except Exception as e:  # noqa: BLE001 - a probe reports every failure and goes on
        print(f"{name}: FAILED {type(e).__name__}: {str(e).splitlines()[0][:200]}", flush=True)


def pallas_add_one():
    def add_one(x_ref, o_ref):
        o_ref[...] = x_ref[...] + 1.0

    x = jnp.arange(1024, dtype=jnp.float32).reshape(32, 32)
    y = pl.pallas_call(add_one, out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype))(x)
    if not bool(jnp.all(y == x + 1)):
        raise AssertionError("wrong result")


def cudnn_attention():
    q = jax.random.normal(jax.random.key(0), (1, 256, 2, 64), jnp.bfloat16)
    jax.block_until_ready(jax.nn.dot_product_attention(q, q, q, is_causal=True,
                                                       implementation="cudnn"))


def imports(module, attribute):
    def fn():
        mod = importlib.import_module(module)
        getattr(mod, attribute)
        return getattr(importlib.import_module(module.split(".")[0]), "__version__", "")
    return fn


def main():
    print("jax", jax.__version__, jax.devices(), flush=True)
    check("pallas (triton)", pallas_add_one)
    check("cudnn causal attention", cudnn_attention)
    check("jla", imports("jla.ops", "linear_attention"))
    check("FLA", imports("fla.ops.gla", "chunk_gla"))
    check("mamba_ssm", imports("mamba_ssm.ops.selective_scan_interface", "selective_scan_fn"))


if __name__ == "__main__":
    main()
