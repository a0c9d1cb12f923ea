"""One forward and one forward+backward of the selective scan kernels, for Nsight Compute (a
profiling target: it times nothing; `python -m benchmarks.kernels` times the op beside its
anchors).

    ncu --clock-control none --kernel-name regex:selective_scan --section ... \
        python3 -m benchmarks.gpu.scan_profile [--shape mamba-370m] [--packed] [--dims T=2048]

Runs a registered selective-scan case (`benchmarks/kernels/registry.py`; default a Mamba-370M
layer, B=4, T=4096, D=2048, N=16, bf16, with z, D, delta_bias, softplus; `--packed`: its
documents-per-row inputs): the inference forward and the training forward plus backward, each
once, so the profile holds every selective-scan kernel once.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from benchmarks.kernels import registry

OP = "selective_scan"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="mamba-370m",
                   choices=[s.name for s in registry.OPS[OP].shapes])
    p.add_argument("--packed", action="store_true", help="the packed-documents inputs")
    p.add_argument("--dims", nargs="+", type=registry.dims_item, default=[], metavar="NAME=INT",
                   help="override dims of the shape, e.g. T=2048")
    args = p.parse_args(argv)
    try:
        dims, x = registry.case_inputs(OP, args.shape, packed=args.packed, dims=args.dims)
    except ValueError as e:
        p.error(f"argument --dims: {e}")
    variant = next(v for v in registry.OPS[OP].variants if v.name == "jaxla")
    fwd = variant.build(x, args.packed)
    grad = jax.grad(lambda *a: jnp.sum(fwd(*a).astype(jnp.float32)),
                    argnums=tuple(range(len(registry.DIFF_ARGS[OP]))))
    inputs = [x[name] for name in registry.DIFF_ARGS[OP]]
    jax.block_until_ready(jax.jit(fwd)(*inputs))
    jax.block_until_ready(jax.jit(grad)(*inputs))
    print(f"ran the selective scan forward and forward+backward at {dims}"
          + (", packed" if args.packed else ""))


if __name__ == "__main__":
    main()
