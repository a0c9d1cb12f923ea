"""Where the GLA op's time goes, and what its hi/lo bf16 operand splits cost (a probe: the speed
of jaxla beside its anchors is `python -m benchmarks.kernels`).

    python -m benchmarks.gpu.gla_fwd_profile [--shape anchor] [--dims T=2048 ...]

On the dense inputs of a registered GLA shape (`benchmarks/kernels/registry.py`) with the default
block sizes: the op's fwd and fwd+bwd, and the forward's two kernels alone (the state scan and
the output kernel), each the mean of 30 back-to-back calls (`timing.time_jax_pipelined`); then
the same with every split of `pallas_kernels.gla.common.mm` turned off (one bf16 dot per matmul,
FLA's rounding), by replacing `mm` in the kernel modules of this process. Errors are RMS
relative errors against the xla path (the output, the largest over the four gradients). Off a GPU
it runs in interpret mode (a check of the script, not a timing).
"""

from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp

import pallas_kernels.gla.chunk_bwd as chunk_bwd_module
import pallas_kernels.gla.chunk_fwd as chunk_fwd_module
import pallas_kernels.gla.chunk_state as chunk_state_module
from benchmarks.kernels import registry
from benchmarks.timing import time_jax_pipelined
from jaxla import ops
from jaxla.testing import rel_error
from pallas_kernels._common import default_interpret
from pallas_kernels.gla import BlockSizes, chunk_gla
from pallas_kernels.gla.chunk_fwd import chunk_output
from pallas_kernels.gla.chunk_state import state_scan
from pallas_kernels.gla.common import mm

MODULES = (chunk_fwd_module, chunk_state_module, chunk_bwd_module)  # those that call `mm`


def _without_splits(*args, split=0, **kwargs):
    del split
    return mm(*args, **kwargs)


def _loss(fn, do, *args):
    return jnp.sum(fn(*args).astype(jnp.float32) * do.astype(jnp.float32))


def _grads(fn, do, *args):
    return jax.grad(_loss, argnums=(2, 3, 4, 5))(fn, do, *args)


def xla_reference(q, k, v, g, do):
    """The xla path's output and gradients of q, k, v, g (the errors' reference)."""
    def xla(q, k, v, g):
        return ops.gla(q, k, v, g, implementation="xla")[0]

    return jax.jit(xla)(q, k, v, g), jax.jit(lambda *a: _grads(xla, do, *a))(q, k, v, g)


def measure(q, k, v, g, do, reference, interpret: bool) -> dict:
    """Times (ms) of the op and of the forward's kernels, and errors against `reference`
    (`xla_reference`)."""
    B, _, H, K = q.shape
    V = v.shape[-1]
    bs = BlockSizes.get_default(head_dim_k=K, head_dim_v=V)

    def pallas(q, k, v, g):
        return chunk_gla(q, k, v, g, block_sizes=bs, interpret=interpret)[0]

    fwd, fwd_bwd = jax.jit(pallas), jax.jit(lambda *a: _grads(pallas, do, *a))
    states = jax.jit(functools.partial(
        state_scan, chunk=bs.chunk, reverse=False, scale=1.0, block_k=bs.block_k_state,
        block_v=bs.block_v_state, num_warps=bs.num_warps_state, num_stages=bs.num_stages_state,
        interpret=interpret, name="gla_fwd_profile_states"))
    output = jax.jit(functools.partial(
        chunk_output, scale=K**-0.5, chunk=bs.chunk, block_k=bs.block_k, block_v=bs.block_v,
        span_limit=bs.span_limit_for(q.dtype), chunks_per_program=bs.chunks_per_program_fwd,
        num_warps=bs.num_warps_fwd, num_stages=bs.num_stages_fwd, interpret=interpret))
    h0 = jnp.zeros((B, H, K, V), jnp.float32)
    hs, _ = states(k, v, g, h0)
    o_ref, g_ref = reference
    return {
        "fwd": time_jax_pipelined(fwd, q, k, v, g, calls=30),
        "fwd+bwd": time_jax_pipelined(fwd_bwd, q, k, v, g, calls=30),
        "state scan": time_jax_pipelined(states, k, v, g, h0, calls=30),
        "output kernel": time_jax_pipelined(output, q, k, v, g, hs, calls=30),
        "o err": rel_error(fwd(q, k, v, g), o_ref),
        "grad err": max(rel_error(a, b) for a, b in
                        zip(fwd_bwd(q, k, v, g), g_ref, strict=True)),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="anchor",
                        choices=[s.name for s in registry.OPS["gla"].shapes])
    parser.add_argument("--dims", nargs="+", type=registry.dims_item, default=[],
                        metavar="NAME=INT", help="override dims of the shape, e.g. T=2048")
    opts = parser.parse_args(argv)
    try:
        dims, x = registry.case_inputs("gla", opts.shape, dims=opts.dims)
    except ValueError as e:
        parser.error(f"argument --dims: {e}")
    q, k, v, g = x["q"], x["k"], x["v"], x["g"]
    do = jax.random.normal(jax.random.key(1), v.shape, jnp.bfloat16)
    interpret = default_interpret()
    reference = xla_reference(q, k, v, g, do)
    rows = {"as shipped (hi/lo splits)": measure(q, k, v, g, do, reference, interpret)}
    for module in MODULES:
        module.mm = _without_splits
    try:
        rows["no splits (FLA's rounding)"] = measure(q, k, v, g, do, reference, interpret)
    finally:
        for module in MODULES:
            module.mm = mm
    label = " ".join(f"{d}{dims[d]}" for d in "BTHKV")
    print(f"GLA {opts.shape} {label} bf16, {jax.devices()[0].device_kind}"
          f"{' (interpret mode)' if interpret else ''}: ms, means of 30 back-to-back calls")
    columns = list(next(iter(rows.values())))
    print(f"{'':28}" + "".join(f"{c:>14}" for c in columns))
    for name, row in rows.items():
        cells = (f"{row[c]:14.1e}" if c.endswith("err") else f"{row[c]:14.3f}" for c in columns)
        print(f"{name:28}" + "".join(cells))


if __name__ == "__main__":
    main()
