"""`CausalLM`: embedding, pre-norm residual blocks of any mixer, final RMSNorm and LM head."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from jaxla.layers import (
    Attention,
    GatedLinearAttention,
    LightningAttention,
    Mamba,
    RMSNorm,
    SparseMoE,
    SwiGLU,
    segments,
)
from jaxla.models.config import LMConfig


def make_mixer(config: LMConfig, layer_idx: int, *, rngs: nnx.Rngs, implementation=None):
    """The mixer of block `layer_idx` as `config` describes it."""
    kind = config.mixers[layer_idx]
    kw = dict(rngs=rngs, dtype=jnp.dtype(config.dtype), param_dtype=jnp.dtype(config.param_dtype),
              initializer_range=config.initializer_range, implementation=implementation)
    D = config.hidden_size
    if kind == "gla":
        return GatedLinearAttention(
            D, num_heads=config.num_heads, expand_k=config.expand_k, expand_v=config.expand_v,
            use_short_conv=config.use_short_conv, conv_size=config.conv_size,
            use_output_gate=config.use_output_gate, norm_eps=config.norm_eps,
            gate_logit_normalizer=config.gate_logit_normalizer,
            gate_low_rank_dim=config.gate_low_rank_dim, clamp_min=config.clamp_min,
            num_kv_heads=config.gla_kv_heads, feature_map=config.feature_map, **kw)
    if kind == "lightning":
        return LightningAttention(
            D, num_heads=config.num_heads, head_dim=config.attn_head_dim, layer_idx=layer_idx,
            num_layers=config.num_layers, decay=config.lightning_decay,
            norm_eps=(config.norm_eps if config.lightning_norm_eps is None
                      else config.lightning_norm_eps), **kw)
    if kind == "mamba":
        return Mamba(D, d_state=config.d_state, d_conv=config.d_conv, expand=config.expand,
                     dt_rank=config.mamba_dt_rank, init=config.mamba_init,
                     num_layers=config.num_layers, **kw)
    if kind == "attention":
        return Attention(D, num_heads=config.num_heads, num_kv_heads=config.kv_heads,
                         head_dim=config.attn_head_dim, rope_theta=config.rope_theta, **kw)
    raise ValueError(f"unknown mixer kind {kind!r} at layer {layer_idx}")


class Block(nnx.Module):
    """`x + mixer(norm(x))`, then `x + mlp(norm(x))` when the config has an MLP; `[B, T, D]`.

    In general `a r + b branch(norm(x))` with `(a, b)` from the config's `*_residual` pairs, and
    the residual `r` is `x` ("prenorm") or `norm(x)` ("minimax", MiniMax-01's blocks).

    Each branch gets `x` and its norm (`branch(x, norm=norm)`), so the backward pass recomputes
    the norm's output from `x`, which it keeps anyway, instead of saving it.
    """

    def __init__(self, config: LMConfig, layer_idx: int, *, rngs: nnx.Rngs, implementation=None):
        dtype, param_dtype = jnp.dtype(config.dtype), jnp.dtype(config.param_dtype)
        D = config.hidden_size
        self.kind = config.mixers[layer_idx]
        self.attn_norm = RMSNorm(D, eps=config.norm_eps, dtype=dtype, param_dtype=param_dtype)
        self.mixer = make_mixer(config, layer_idx, rngs=rngs, implementation=implementation)
        self.residual_from_norm = config.block_style == "minimax"
        self.mixer_residual = (config.attention_residual if self.kind == "attention"
                               else config.linear_residual)
        self.mlp_residual = config.mlp_residual
        if config.mlp:
            self.mlp_norm = RMSNorm(D, eps=config.norm_eps, dtype=dtype, param_dtype=param_dtype)
            if config.num_experts:
                self.mlp = SparseMoE(D, config.mlp_size, num_experts=config.num_experts,
                                     top_k=config.num_experts_per_tok, rngs=rngs, dtype=dtype,
                                     param_dtype=param_dtype,
                                     initializer_range=config.initializer_range)
            else:
                self.mlp = SwiGLU(D, config.mlp_size, rngs=rngs, dtype=dtype,
                                  param_dtype=param_dtype,
                                  initializer_range=config.initializer_range)
        else:
            self.mlp_norm = self.mlp = None

    def _add(self, x, h, y, scales):
        residual = h if self.residual_from_norm else x
        alpha, beta = scales
        if alpha != 1.0:
            residual = residual * jnp.asarray(alpha, residual.dtype)
        if beta != 1.0:
            y = y * jnp.asarray(beta, y.dtype)
        return residual + y

    def __call__(self, x: jax.Array, cache=None, *, segment_ids=None):
        if cache is None:
            y = self.mixer(x, segment_ids=segment_ids, norm=self.attn_norm)
        else:
            y, cache = self.mixer(x, cache=cache, norm=self.attn_norm)
        x = self._add(x, self._residual_norm(self.attn_norm, x), y, self.mixer_residual)
        if self.mlp is not None:
            y = self.mlp(x, norm=self.mlp_norm)
            x = self._add(x, self._residual_norm(self.mlp_norm, x), y, self.mlp_residual)
        return x if cache is None else (x, cache)

    def _residual_norm(self, norm, x):
        """norm(x) when it is the residual (MiniMax), computed apart from the branch's own."""
        return norm(x) if self.residual_from_norm else None


def _remat_block(block: Block, x: jax.Array, segment_ids) -> jax.Array:
    """`block(x)` recomputed in the backward pass; functional, so nothing is written back to
    the block's variables (some of which, like a fixed decay, may come from outside the trace)."""
    graphdef, state = nnx.split(block)
    return jax.checkpoint(lambda state, x, ids: nnx.merge(graphdef, state)(x, segment_ids=ids))(
        state, x, segment_ids)


def scan_groups(blocks, period: int):
    """`[(graphdef, stacked_state)]` for each position j < period of a repeating layer pattern.

    Block `g * period + j` is repetition g of position j; position j's states are stacked along a
    new leading axis of size `len(blocks) // period`. None when two repetitions of a position differ
    in structure (then the blocks run one after another).
    """
    groups = []
    for j in range(period):
        splits = [nnx.split(block) for block in blocks[j::period]]
        graphdef = splits[0][0]
        if any(g != graphdef for g, _ in splits[1:]):
            return None
        stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *(state for _, state in splits))
        groups.append((graphdef, stacked))
    return groups


def head_logits(x: jax.Array, head: jax.Array) -> jax.Array:
    """Logits `[..., vocab]` of hidden states `x [..., D]` through the LM head `[D, vocab]`: the
    head cast to x's dtype, accumulated and returned in float32 (float64 for float64 x)."""
    return jnp.dot(x, head.astype(x.dtype),
                   preferred_element_type=jnp.promote_types(x.dtype, jnp.float32))


class CausalLM(nnx.Module):
    """A decoder-only language model: `input_ids [B, T] int -> logits [B, T, vocab] float32`.

    Token embedding (normal(0, initializer_range)), `num_layers` `Block`s whose mixers follow
    `config.layer_pattern`, a final RMSNorm and the LM head (the embedding's transpose when
    `tie_embeddings`, else its own `[D, vocab]` matrix). Compute in `config.dtype`, parameters in
    `config.param_dtype`; logits are float32 (float64 for a float64 model).

    `implementation` overrides `config.implementation` for every mixer's op.

    With `config.scan_layers` a forward pass without a cache runs the blocks as a `lax.scan` over
    repetitions of `config.layer_pattern` (parameters stay one module per block); by default they
    run one after another.

    Packed documents: `model(input_ids, segment_ids=ids)` (`ids [B, T]` integers; a new
    document starts wherever the id changes, `jaxla.layers.segments`) computes every document as
    if it were alone in its row: each mixer gets the ids (recurrent states restart, convolutions
    and attention stay inside the document, rotary positions count from its start); the
    embedding, norms and MLPs act per position.

    Decoding: `init_cache(batch_size, max_len)` is a tuple with one cache per block;
    `model(input_ids, cache=cache)` returns `(logits, new_cache)` for a prefill of any T or one
    token at a time (one document: segment_ids with a cache is a ValueError).
    """

    def __init__(self, config: LMConfig, *, rngs: nnx.Rngs, implementation: str | None = None):
        if not isinstance(config, LMConfig):
            raise TypeError(f"config must be an LMConfig, got {type(config).__name__}")
        implementation = config.implementation if implementation is None else implementation
        if implementation != config.implementation:
            config = config.replace(implementation=implementation)  # validates it
        self.config = config
        dtype, param_dtype = jnp.dtype(config.dtype), jnp.dtype(config.param_dtype)
        self.embed = nnx.Embed(config.vocab_size, config.hidden_size, dtype=dtype,
                               param_dtype=param_dtype,
                               embedding_init=nnx.initializers.normal(config.initializer_range),
                               rngs=rngs)
        self.blocks = nnx.List([Block(config, i, rngs=rngs, implementation=implementation)
                                for i in range(config.num_layers)])
        self.norm = RMSNorm(config.hidden_size, eps=config.norm_eps, dtype=dtype,
                            param_dtype=param_dtype)
        if config.tie_embeddings:
            self.lm_head = None
        else:
            self.lm_head = nnx.Param(nnx.initializers.normal(config.initializer_range)(
                rngs.params(), (config.hidden_size, config.vocab_size), param_dtype))

    def init_cache(self, batch_size: int, max_len: int) -> tuple:
        """One cache per block (recurrent states, conv states, KV caches of max_len positions)."""
        return tuple(block.mixer.init_cache(batch_size, max_len) for block in self.blocks)

    def __call__(self, input_ids: jax.Array, cache: tuple | None = None, *, segment_ids=None):
        out = self.hidden_states(input_ids, cache, segment_ids=segment_ids)
        if cache is None:
            return head_logits(out, self.head_matrix())
        x, new_cache = out
        return head_logits(x, self.head_matrix()), new_cache

    def head_matrix(self) -> jax.Array:
        """The LM head `[D, vocab]` in param_dtype (the embedding's transpose when tied)."""
        return self.embed.embedding[...].T if self.lm_head is None else self.lm_head[...]

    def hidden_states(self, input_ids: jax.Array, cache: tuple | None = None, *,
                      segment_ids=None):
        """The final-normed hidden states `[B, T, D]` in the compute dtype, the input of the LM
        head (`(states, new_cache)` with a cache): `model(ids)` is
        `head_logits(model.hidden_states(ids), model.head_matrix())`."""
        if input_ids.ndim != 2 or not jnp.issubdtype(input_ids.dtype, jnp.integer):
            raise ValueError(f"input_ids must be an int array [B, T], got {input_ids.shape=}, "
                             f"{input_ids.dtype=}")
        if cache is not None and len(cache) != len(self.blocks):
            raise ValueError(f"cache has {len(cache)} entries for {len(self.blocks)} blocks")
        segments.check("CausalLM", segment_ids, *input_ids.shape, cache)
        x = self.embed(input_ids)
        new_cache = []
        groups = None
        period = len(self.config.layer_pattern)
        if cache is None and self.config.scan_layers and len(self.blocks) > period:
            groups = scan_groups(self.blocks, period)
        if groups is not None:
            x = self._scanned_blocks(x, groups, segment_ids)
        else:
            for i, block in enumerate(self.blocks):
                if cache is not None:
                    x, c = block(x, cache[i])
                    new_cache.append(c)
                elif self.config.remat:
                    x = _remat_block(block, x, segment_ids)
                else:
                    x = block(x, segment_ids=segment_ids)
        x = self.norm(x)
        return x if cache is None else (x, tuple(new_cache))

    def _scanned_blocks(self, x: jax.Array, groups, segment_ids) -> jax.Array:
        """The blocks as one `lax.scan` over repetitions of the layer pattern: XLA compiles one
        repetition's body (and its kernels) once instead of once per layer."""

        def body(x, states):
            for (graphdef, _), state in zip(groups, states, strict=True):
                x = nnx.merge(graphdef, state)(x, segment_ids=segment_ids)
            return x, None

        if self.config.remat:
            body = jax.checkpoint(body)
        x, _ = jax.lax.scan(body, x, tuple(state for _, state in groups))
        return x

    def num_params(self) -> int:
        """Number of parameters (works on an abstract model from `nnx.eval_shape`)."""
        return sum(math.prod(p.shape) for p in jax.tree.leaves(nnx.state(self, nnx.Param)))
