"""Top-k routed mixture of SwiGLU experts (Mixtral's sparse MoE block, as in MiniMax-01)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxla.layers._common import compute_dtype, input_projections, normal_init, recomputed


class SparseMoE(nnx.Module):
    """`x [..., D] -> [..., D]`: each token goes to its `top_k` best of `num_experts` experts.

    Router: `probs = softmax(x @ router)` in float32 over the E experts; the top_k probabilities,
    renormalised to sum to 1, weight the chosen experts' outputs (Mixtral / MiniMax-01 routing,
    no jitter). Expert e is a SwiGLU, `down_e(silu(x gate_e) * (x up_e))`, weights
    `gate_proj, up_proj: [E, D, I]`, `down_proj: [E, I, D]`, router `[D, E]`; no biases.

    Dispatch is dense: every expert runs on every token and the routing weights (zero outside the
    top_k) mix the results. Exact and simple, at E / top_k times the expert FLOPs of a sparse
    dispatch: meant for the small MoE configs this library converts and tests, not for speed.
    """

    def __init__(self, hidden_size: int, intermediate_size: int, *, num_experts: int,
                 top_k: int = 2, rngs: nnx.Rngs, dtype=None, param_dtype=jnp.float32,
                 initializer_range: float = 0.02):
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"SparseMoE: top_k must be in [1, num_experts], got {top_k=}, "
                             f"{num_experts=}")
        self.num_experts = num_experts
        self.top_k = top_k
        self.dtype = dtype
        init = normal_init(initializer_range)
        E, D, I = num_experts, hidden_size, intermediate_size
        self.router = nnx.Param(init(rngs.params(), (D, E), param_dtype))
        self.gate_proj = nnx.Param(init(rngs.params(), (E, D, I), param_dtype))
        self.up_proj = nnx.Param(init(rngs.params(), (E, D, I), param_dtype))
        self.down_proj = nnx.Param(init(rngs.params(), (E, I, D), param_dtype))

    def routing_weights(self, x: jax.Array) -> jax.Array:
        """`[..., E]` float32: the renormalised top_k router probabilities, zero elsewhere."""
        return self._routing_weights(_router_logits(x, self.router[...].astype(jnp.float32)))

    def _routing_weights(self, logits: jax.Array) -> jax.Array:
        probs = jax.nn.softmax(logits, axis=-1)
        top, idx = jax.lax.top_k(probs, self.top_k)
        top = top / jnp.sum(top, axis=-1, keepdims=True)
        one_hot = jax.nn.one_hot(idx, self.num_experts, dtype=jnp.float32)  # [..., k, E]
        return jnp.einsum("...k,...ke->...e", top, one_hot)

    def __call__(self, x: jax.Array, *, norm=None) -> jax.Array:
        cd = compute_dtype(self.dtype, x, norm)

        def experts(x, w):  # [..., E, I] in the compute dtype, as SwiGLU's projections
            return jnp.einsum("...d,edi->...ei", x.astype(cd), w,
                              preferred_element_type=jnp.float32).astype(cd)

        def mix_and_down(gate, up, weights, down):
            h = (jax.nn.silu(gate.astype(jnp.float32)) * up.astype(jnp.float32)
                 * weights[..., None]).astype(cd)
            return jnp.einsum("...ei,eid->...d", h, down, preferred_element_type=jnp.float32)

        logits, gate, up = input_projections(
            x, norm, (_router_logits, self.router[...].astype(jnp.float32)),
            (experts, self.gate_proj[...].astype(cd)), (experts, self.up_proj[...].astype(cd)))
        weights = self._routing_weights(logits)
        # As in SwiGLU: the float32 activation chain and the mixed product that the down
        # projection's weight gradient reads are recomputed from gate and up in the backward,
        # not saved (at E x I per token they were most of a MoE block's activation memory).
        y = recomputed(mix_and_down)(gate, up, weights, self.down_proj[...].astype(cd))
        return y.astype(cd)


def _router_logits(x: jax.Array, router: jax.Array) -> jax.Array:
    return jnp.dot(x.astype(jnp.float32), router)
