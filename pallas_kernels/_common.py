"""Helpers shared by the Pallas kernels: interpret-mode default, padding, CUDA lowering on CPU."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
from jax.sharding import AbstractDevice, AbstractMesh

# jax 0.11 and 0.12 deprecate the Triton backend, which these kernels lower through on GPU. The
# filter is process-wide, by message (README, "Set-up": what jaxla does about the deprecation).
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


def fma(a: jax.Array, b: jax.Array, c: jax.Array, *, asm: bool) -> jax.Array:
    """`a * b + c` in float32, broadcast; with `asm`, one rounding through PTX's `fma.rn.f32`.

    The Triton that lowers Pallas on GPU leaves `a * b + c` as FMUL + FADD (Nsight Compute counts
    ~10x more unfused than fused float32 instructions in the selective-scan kernels); inline
    assembly makes it one FFMA. Pallas' interpreter has no inline assembly: pass `asm=False`.
    """
    if not asm:
        return a * b + c
    shape = jnp.broadcast_shapes(jnp.shape(a), jnp.shape(b), jnp.shape(c))
    args = [jnp.broadcast_to(x, shape) for x in (a, b, c)]
    if any(x.dtype != jnp.float32 for x in args):
        raise TypeError(f"fma(asm=True) takes float32, got {[x.dtype for x in args]}")
    from jax.experimental.pallas import triton as pltriton

    [y] = pltriton.elementwise_inline_asm(
        "fma.rn.f32 $0, $1, $2, $3;", args=args, constraints="=f,f,f,f", pack=1,
        result_shape_dtypes=[jax.ShapeDtypeStruct(shape, jnp.float32)])
    return y


def sum_products(x: jax.Array, y: jax.Array, *, asm: bool, chains: int = 4) -> jax.Array:
    """`sum(x * y, axis=0)` for float32 `[R, ...]` tiles whose axis 0 lies within each thread.

    With `asm` the rows are split apart (`jnp.split`, free in registers for that layout) and
    summed in `chains` independent chains of fused multiply-adds: R + chains - 1 instructions
    where a reduction after the products takes 2 R - 1.
    """
    R = x.shape[0]
    out_shape = jnp.broadcast_shapes(x.shape, y.shape)[1:]
    if not asm or R == 1 or R > 16:  # splitting more rows costs Triton's compiler minutes
        return jnp.sum(x * y, axis=0)
    if not is_pow2(R) or y.shape[0] != R:
        raise ValueError(f"sum_products(asm=True) takes a power-of-two axis 0, got {x.shape}, "
                         f"{y.shape}")

    def rows(a):
        parts = [a]
        while parts[0].shape[0] > 1:
            parts = [half for p in parts for half in jnp.split(p, 2, axis=0)]
        return parts

    xs, ys = rows(x), rows(y)
    chains = min(chains, R)
    acc = [xs[k] * ys[k] for k in range(chains)]
    for k in range(chains, R):
        acc[k % chains] = fma(xs[k], ys[k], acc[k % chains], asm=True)
    while len(acc) > 1:
        acc = [acc[i] + acc[i + 1] for i in range(0, len(acc), 2)]
    return acc[0].reshape(out_shape)


def lane_xor(x: jax.Array, offset: int, *, asm: bool) -> jax.Array:
    """Each element of float32 `x` replaced by the one `offset` away along the last axis, xor-wise.

    For a tile whose last axis lies one element per lane across a warp of 32 (the caller's
    layout), this is the butterfly shuffle `shfl.sync.bfly` (`asm`): lane l reads lane l ^ offset.
    Without `asm` (the interpreter) the same permutation is done on the array.
    """
    L = x.shape[-1]
    if not is_pow2(offset) or offset >= L:
        raise ValueError(f"offset must be a power of two below {L}, got {offset=}")
    if not asm:
        y = x.reshape(x.shape[:-1] + (L // (2 * offset), 2, offset))
        return jnp.flip(y, axis=-2).reshape(x.shape)
    if x.dtype != jnp.float32 or L != 32:
        raise TypeError(f"lane_xor(asm=True) takes float32 [..., 32], got {x.dtype} {x.shape}")
    from jax import lax
    from jax.experimental.pallas import triton as pltriton

    [y] = pltriton.elementwise_inline_asm(
        f"shfl.sync.bfly.b32 $0, $1, {offset}, 0x1f, 0xffffffff;",
        args=[lax.bitcast_convert_type(x, jnp.int32)], constraints="=r,r", pack=1,
        result_shape_dtypes=[jax.ShapeDtypeStruct(x.shape, jnp.int32)])
    return lax.bitcast_convert_type(y, jnp.float32)


def is_pow2(n) -> bool:
    """Whether `n` is an int (not a bool) that is a power of two."""
    return isinstance(n, int) and not isinstance(n, bool) and n >= 1 and n & (n - 1) == 0


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
