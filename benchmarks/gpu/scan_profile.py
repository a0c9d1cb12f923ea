"""One forward and one forward+backward of the selective scan kernels, for Nsight Compute.

    ncu --clock-control none --kernel-name regex:selective_scan --section ... \
        python3 -m benchmarks.gpu.scan_profile [--T 4096]

Runs the Mamba-370M layer of `benchmarks.kernels.selective_scan` (B=4, D=2048, N=16, bf16, with
z, D, delta_bias, softplus): the inference forward (2 kernels) and the training forward plus
backward (4 kernels), each once, so the profile holds every selective-scan kernel once.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from benchmarks.kernels.selective_scan import inputs
from jaxla import ops


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--T", type=int, default=4096)
    T = p.parse_args(argv).T

    def fwd(u, delta, A, Bm, Cm, D, z, bias):
        return ops.selective_scan(u, delta, A, Bm, Cm, D, z, delta_bias=bias,
                                  delta_softplus=True, implementation="pallas")[0]

    grad = jax.grad(lambda *a: jnp.sum(fwd(*a).astype(jnp.float32)), argnums=tuple(range(8)))
    args = inputs(T)
    jax.block_until_ready(jax.jit(fwd)(*args))
    jax.block_until_ready(jax.jit(grad)(*args))
    print(f"ran the selective scan forward and forward+backward at T={T}")


if __name__ == "__main__":
    main()
