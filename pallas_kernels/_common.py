"""Helpers shared by the Pallas kernels: interpret-mode default, padding, CUDA lowering on CPU."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
from jax.sharding import AbstractDevice, AbstractMesh

# jax 0.11 deprecates the Triton backend, which is still the only `pallas_call` lowering on GPU.
warnings.filterwarnings("ignore", message="The Pallas Triton backend is deprecated")


def default_interpret() -> bool:
    """Kernels run compiled on a GPU and in Pallas' interpreter everywhere else."""
    return jax.default_backend() != "gpu"


def exp2(x: jax.Array, *, ftz: bool) -> jax.Array:
    """`2 ** x` for float32 `x` inside a kernel; with `ftz`, PTX's `ex2.approx.ftz.f32`.

    `jnp.exp2` lowers to libdevice's `__nv_exp2f`, which keeps subnormal results: around its one
    MUFU.EX2 instruction the compiled code tests and rescales the argument (about 4 instructions
    where ftz needs 1). Flushing subnormal results (< 2^-126) to zero changes nothing a decay
    computes. Pallas' interpreter has no inline assembly: pass `ftz=False` there.
    """
    if not ftz:
        return jnp.exp2(x)
    if x.dtype != jnp.float32:
        raise TypeError(f"exp2(ftz=True) takes float32, got {x.dtype}")
    from jax.experimental.pallas import triton as pltriton

    [y] = pltriton.elementwise_inline_asm(
        "ex2.approx.ftz.f32 $0, $1;", args=[x], constraints="=f,f", pack=1,
        result_shape_dtypes=[jax.ShapeDtypeStruct(x.shape, x.dtype)])
    return y


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def padded_dim(n: int) -> int:
    """Head dims pad to a power of two >= 16 (Triton dots need every dim >= 16)."""
    return max(16, next_pow2(n))


def pad_axis(x, axis: int, size: int, value=0):
    """Pad `x` along `axis` up to `size` with `value` (no-op when already that size)."""
    extra = size - x.shape[axis]
    if extra < 0:
        raise ValueError(f"cannot pad axis {axis} of shape {x.shape} down to {size}")
    if extra == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    return jnp.pad(x, widths, constant_values=value)


H100 = AbstractDevice(device_kind="NVIDIA H100 80GB HBM3", num_cores=None, platform="gpu")


def lower_for_cuda(fn, *args) -> str:
    """Lower `jax.jit(fn)(*args)` for an H100 on any machine and return the StableHLO text.

    On a CPU-only machine this catches primitives the Triton lowering lacks, non-power-of-two
    blocks and layout errors; it does not run Triton's compiler (register or shared-memory
    overflows still show only on the GPU).
    """
    mesh = AbstractMesh((1,), ("x",), abstract_device=H100)
    with jax.sharding.use_abstract_mesh(mesh):
        return jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
