"""mamba_ssm's `Mamba` block (`modules/mamba_simple.py`; research/mamba_pallas.md §A3) over
`jaxla.ops.selective_scan`."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from jaxla.layers import segments
from jaxla.layers._common import (
    check_implementation,
    check_kernel_sizes,
    compute_dtype,
    input_projections,
    linear,
)
from jaxla.layers.conv import ShortConvolution
from jaxla.ops import selective_scan, selective_state_update


class MambaCache(NamedTuple):
    """Decode state of a `Mamba` layer."""

    conv: jax.Array  # [B, d_conv - 1, d_inner], the last inputs of the convolution
    ssm: jax.Array  # [B, d_inner, d_state] float32


def _dt_bias_init(dt_min: float, dt_max: float, dt_init_floor: float):
    """mamba_ssm's dt_proj bias: inverse softplus of dt ~ logUniform[dt_min, dt_max], >= floor."""

    def init(key, shape, dtype=jnp.float32):
        u = jax.random.uniform(key, shape, jnp.float32)
        dt = jnp.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = jnp.maximum(dt, dt_init_floor)
        return (dt + jnp.log(-jnp.expm1(-dt))).astype(dtype)

    return init


def _uniform(bound: float):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class Mamba(nnx.Module):
    """The Mamba (S6) block, `x [B, T, D] -> [B, T, D]`, with mamba_ssm's defaults.

    `in_proj: D -> 2 d_inner` (x, z), causal depthwise conv1d (d_conv taps, bias) + silu on x,
    `x_proj: d_inner -> dt_rank + 2 d_state` (dt, B, C), `dt_proj: dt_rank -> d_inner` whose bias
    is the scan's `delta_bias` (softplus inside the scan), `A = -exp(A_log)` with the S4D-real
    init `A_log[d, n] = log(n + 1)`, skip `D = 1`, gate `silu(z)`, `out_proj: d_inner -> D`.
    dt_proj's weight is uniform(+-dt_rank^-0.5 dt_scale) and its bias the inverse softplus of a
    log-uniform dt. `init="normal"`: the other linear weights are normal(0, initializer_range);
    `init="mamba_ssm"`: mamba_ssm's `MambaLMHeadModel` init, PyTorch's default
    uniform(+-fan_in^-0.5) for in_proj, x_proj and out_proj, then out_proj divided by
    sqrt(num_layers) (its `rescale_prenorm_residual`, one residual per block).

    Decoding: `init_cache(batch_size)` -> `MambaCache`; `__call__(x, cache=c)` returns
    `(y, new_cache)`; one token uses `selective_state_update`, longer inputs `selective_scan`.

    Packed documents: `__call__(x, segment_ids=ids)` (`ids [B, T]` integers,
    `jaxla.layers.segments`) runs every document as if alone: the convolution does not read
    across a document start and the scan's state restarts there.
    """

    def __init__(self, hidden_size: int = 1024, *, d_state: int = 16, d_conv: int = 4,
                 expand: int = 2, dt_rank: int | None = None, dt_min: float = 0.001,
                 dt_max: float = 0.1, dt_init: str = "random", dt_scale: float = 1.0,
                 dt_init_floor: float = 1e-4, conv_bias: bool = True, bias: bool = False,
                 init: str = "normal", num_layers: int = 1,
                 implementation: str | None = None, initializer_range: float = 0.02,
                 rngs: nnx.Rngs, dtype=None, param_dtype=jnp.float32):
        name = "Mamba"
        check_implementation(implementation)
        check_kernel_sizes(name, "selective_scan", implementation, state_size=d_state)
        if init not in ("normal", "mamba_ssm"):
            raise ValueError(f"{name}: init must be 'normal' or 'mamba_ssm', got {init!r}")
        if dt_init not in ("random", "constant"):
            raise ValueError(f"{name}: dt_init must be 'random' or 'constant', got {dt_init!r}")
        self.hidden_size = hidden_size
        self.d_state = d_state
        self.d_conv = d_conv
        self.d_inner = expand * hidden_size
        self.dt_rank = math.ceil(hidden_size / 16) if dt_rank is None else dt_rank
        self.implementation = implementation
        self.dtype = dtype
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype, stddev=initializer_range)

        def kernel(fan_in, scale=1.0):  # mamba_ssm: PyTorch's nn.Linear default
            return (dict(kernel_init=_uniform(scale / math.sqrt(fan_in)))
                    if init == "mamba_ssm" else {})

        self.in_proj = linear(hidden_size, 2 * self.d_inner, use_bias=bias, **kw,
                              **kernel(hidden_size))
        # PyTorch's Conv1d default init (kept by mamba_ssm): U(+-1/sqrt(fan_in)), fan_in = d_conv.
        uniform = _uniform(1.0 / math.sqrt(d_conv))
        self.conv1d = ShortConvolution(self.d_inner, d_conv, use_bias=conv_bias, activation="silu",
                                       rngs=rngs, dtype=dtype, param_dtype=param_dtype,
                                       kernel_init=uniform, bias_init=uniform)
        self.x_proj = linear(self.d_inner, self.dt_rank + 2 * d_state, **kw,
                             **kernel(self.d_inner))
        std = self.dt_rank**-0.5 * dt_scale
        if dt_init == "constant":
            dt_kernel = nnx.initializers.constant(std)
        else:
            dt_kernel = _uniform(std)
        self.dt_proj = linear(self.dt_rank, self.d_inner, use_bias=True, rngs=rngs, dtype=dtype,
                              param_dtype=param_dtype, kernel_init=dt_kernel,
                              bias_init=_dt_bias_init(dt_min, dt_max, dt_init_floor))
        A = jnp.broadcast_to(jnp.arange(1, d_state + 1, dtype=jnp.float32),
                             (self.d_inner, d_state))
        self.A_log = nnx.Param(jnp.log(A).astype(param_dtype))
        self.D = nnx.Param(jnp.ones((self.d_inner,), param_dtype))
        self.out_proj = linear(self.d_inner, hidden_size, use_bias=bias, **kw,
                               **kernel(self.d_inner, 1.0 / math.sqrt(num_layers)))

    def init_cache(self, batch_size: int, max_len: int | None = None) -> MambaCache:
        """Zero conv and SSM states (max_len is ignored: the state does not grow)."""
        del max_len
        return MambaCache(self.conv1d.init_cache(batch_size),
                          jnp.zeros((batch_size, self.d_inner, self.d_state), jnp.float32))

    def __call__(self, x: jax.Array, cache: MambaCache | None = None, *, segment_ids=None,
                 norm=None):
        B, T, D = x.shape
        if D != self.hidden_size:
            raise ValueError(f"Mamba({self.hidden_size}) got {x.shape=}")
        segments.check("Mamba", segment_ids, B, T, cache)
        cd = compute_dtype(self.dtype, x, norm)
        xz, = input_projections(x, norm, self.in_proj)
        u, z = xz[..., :self.d_inner], xz[..., self.d_inner:]
        if cache is None:
            u = self.conv1d(u, segment_ids=segment_ids)
        else:
            u, conv_state = self.conv1d(u, cache.conv)
        x_dbl = self.x_proj(u)
        r, N = self.dt_rank, self.d_state
        dt, Bm, Cm = x_dbl[..., :r], x_dbl[..., r:r + N], x_dbl[..., r + N:]
        # dt_proj without its bias: the bias enters the scan as delta_bias (before the softplus).
        delta = jnp.dot(dt.astype(cd), self.dt_proj.kernel[...].astype(cd))
        A = -jnp.exp(self.A_log[...].astype(jnp.float32))
        Dskip = self.D[...].astype(jnp.float32)
        delta_bias = self.dt_proj.bias[...].astype(jnp.float32)
        if cache is not None and T == 1:
            y, ssm = selective_state_update(
                cache.ssm, u[:, 0], delta[:, 0], A, Bm[:, 0], Cm[:, 0], Dskip, z[:, 0],
                delta_bias=delta_bias, delta_softplus=True)
            y = y[:, None]
        else:
            y, ssm = selective_scan(
                u, delta, A, Bm, Cm, Dskip, z, delta_bias=delta_bias, delta_softplus=True,
                initial_state=None if cache is None else cache.ssm,
                output_final_state=cache is not None, segment_ids=segment_ids,
                implementation=self.implementation)
        out = self.out_proj(y.astype(cd))
        if cache is None:
            return out
        return out, MambaCache(conv_state, ssm)
