"""`LMConfig`: one frozen description of a language model, with presets as classmethods.

A model is an embedding, `num_layers` pre-norm residual blocks and a final RMSNorm + LM head.
Block i is `x + mixer(norm(x))`, then `x + mlp(norm(x))` when the model has an MLP. The mixer of
block i is `layer_pattern[i % len(layer_pattern)]`, one of:

* "gla": FLA's GatedLinearAttention (research/fla.md §8): q, k `D -> key_dim`, v and the output
  gate `D -> value_dim`, a low-rank forget gate `D -> gate_low_rank_dim -> key_dim` (+bias)
  through `logsigmoid / gate_logit_normalizer`, per-head RMSNorm times swish(output gate),
  o `value_dim -> D`; key_dim = D * expand_k, value_dim = D * expand_v; optional short convs.
* "lightning": MiniMax-01's lightning attention: qkv `D -> 3 H d_h` with silu, constant decay
  (`lightning_decay` convention), RMSNorm over `H d_h`, sigmoid output gate `D -> H d_h`,
  out `H d_h -> D`; d_h = head_dim (D / num_heads by default).
* "mamba": mamba_ssm's Mamba block (research/mamba_pallas.md §A3), d_inner = expand * D.
* "attention": softmax attention with RoPE and `num_kv_heads` grouped KV heads.

The MLP is SwiGLU with `intermediate_size` (FLA's rule when None:
`256 * ceil(int(D * hidden_ratio * 2 / 3) / 256)`); `mlp=False` drops it (pure Mamba stacks);
`num_experts > 0` makes it a top-k routed mixture of SwiGLU experts of that width (Mixtral's,
as in MiniMax-01).

`block_style="minimax"` is MiniMax-01's block: the residual branch starts from the normalised
input, `h = norm(x); x = alpha h + beta mixer(h)`, and likewise around the MLP; the
`*_residual = (alpha, beta)` pairs scale the two terms in either style (default (1, 1)).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

MixerKind = Literal["gla", "lightning", "mamba", "attention"]
MIXER_KINDS: tuple[str, ...] = ("gla", "lightning", "mamba", "attention")
BLOCK_STYLES: tuple[str, ...] = ("prenorm", "minimax")
# Feature maps FLA's GLA may apply to q and k (fla.modules.activations.ACT2FN, less bias_gelu).
FEATURE_MAPS: tuple[str, ...] = ("relu", "sigmoid", "logsigmoid", "silu", "swish", "sqrelu", "gelu")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LMConfig:
    # Vocabulary and widths.
    vocab_size: int = 256
    hidden_size: int = 64
    num_layers: int = 2
    # Mixer of each block, repeated cyclically over the depth; its length must divide num_layers.
    layer_pattern: tuple[str, ...] = ("gla",)
    # Heads of gla / lightning / attention mixers.
    num_heads: int = 2
    # Grouped-query attention: KV heads of "attention" mixers (None: num_heads).
    num_kv_heads: int | None = None
    # Head dim of lightning / attention mixers (None: hidden_size // num_heads).
    head_dim: int | None = None

    # MLP (SwiGLU) after each mixer.
    mlp: bool = True
    hidden_ratio: int = 4
    intermediate_size: int | None = None
    # Mixture of experts: 0 is one dense SwiGLU; E > 0 routes each token to its
    # num_experts_per_tok best of E SwiGLU experts of width intermediate_size / the rule above.
    num_experts: int = 0
    num_experts_per_tok: int = 2

    # Residual wiring of each block (module docstring): "prenorm" or "minimax", and the
    # (alpha, beta) of `alpha * residual + beta * branch` after attention, linear mixers, MLP.
    block_style: str = "prenorm"
    attention_residual: tuple[float, float] = (1.0, 1.0)
    linear_residual: tuple[float, float] = (1.0, 1.0)
    mlp_residual: tuple[float, float] = (1.0, 1.0)

    # GLA (FLA defaults).
    expand_k: float = 0.5
    expand_v: float = 1.0
    gate_low_rank_dim: int = 16
    gate_logit_normalizer: float = 16.0
    use_output_gate: bool = True
    use_short_conv: bool = False
    conv_size: int = 4
    # FLA's options: grouped KV heads (None: num_heads), a feature map on q and k (FEATURE_MAPS)
    # and a floor on the log forget gate.
    gla_kv_heads: int | None = None
    feature_map: str | None = None
    clamp_min: float | None = None

    # Lightning: decay convention, "minimax" (MiniMax-01's code) or "fla".
    lightning_decay: str = "minimax"
    # Epsilon of the lightning layers' output RMSNorm (None: norm_eps; MiniMax's is 1e-6).
    lightning_norm_eps: float | None = None

    # Mamba (mamba_ssm defaults); dt_rank None means ceil(hidden_size / 16).
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | None = None
    # "normal": linear weights normal(0, initializer_range); "mamba_ssm": mamba_ssm's init
    # (PyTorch-default uniform, out_proj / sqrt(num_layers); jaxla.layers.Mamba).
    mamba_init: str = "normal"

    # Softmax attention.
    rope_theta: float = 10000.0

    # Everything else.
    norm_eps: float = 1e-6
    tie_embeddings: bool = True
    initializer_range: float = 0.02
    # Compute and parameter dtypes, by name ("float32", "bfloat16", "float16"; "float64" needs
    # jax_enable_x64: a reference for tests, where the layers keep float32 parts float32).
    dtype: str = "float32"
    param_dtype: str = "float32"
    # Implementation of the linear-attention / scan ops ("pallas", "xla", "naive"; None: pallas on
    # GPU, xla elsewhere). Softmax attention reads "xla"/"naive" as XLA, else cuDNN on GPU for bf16.
    implementation: str | None = None
    # Rematerialise each block in the backward pass (saves activation memory, costs a forward).
    remat: bool = False
    # Run the blocks of a forward pass as a lax.scan over repetitions of layer_pattern, so XLA
    # compiles one repetition instead of every layer (compile time independent of depth). Off by
    # default: inside the scan every custom call (cuBLAS, Pallas) that reads a layer's slice of
    # the stacked parameters and residuals gets a copy of it, and the copies cost more step time
    # than the compile saves (benchmarks/RESULTS.md, "Layers unrolled").
    scan_layers: bool = False

    def __post_init__(self):
        # Accept a list (e.g. read back from JSON); the config must stay hashable.
        object.__setattr__(self, "layer_pattern", tuple(self.layer_pattern))
        for name in ("attention_residual", "linear_residual", "mlp_residual"):
            pair = getattr(self, name)
            if len(pair) != 2:
                raise ValueError(f"{name} must be (alpha, beta), got {name}={pair!r}")
            object.__setattr__(self, name, tuple(float(v) for v in pair))
        positive = ("vocab_size", "hidden_size", "num_layers", "num_heads", "hidden_ratio",
                    "gate_low_rank_dim", "conv_size", "d_state", "d_conv", "expand")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {name}={value!r}")
        if not self.layer_pattern:
            raise ValueError("layer_pattern must name at least one mixer, got ()")
        for kind in self.layer_pattern:
            if kind not in MIXER_KINDS:
                raise ValueError(f"unknown mixer {kind!r} in layer_pattern={self.layer_pattern}; "
                                 f"choose from {MIXER_KINDS}")
        if self.num_layers % len(self.layer_pattern):
            raise ValueError(f"len(layer_pattern)={len(self.layer_pattern)} must divide "
                             f"num_layers={self.num_layers}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"num_heads={self.num_heads} must divide hidden_size={self.hidden_size}")
        if self.num_heads % self.kv_heads:
            raise ValueError(f"num_kv_heads={self.num_kv_heads} must divide num_heads={self.num_heads}")
        if self.mamba_init not in ("normal", "mamba_ssm"):
            raise ValueError(f"mamba_init must be 'normal' or 'mamba_ssm', got {self.mamba_init!r}")
        if self.gla_kv_heads is not None and (
                self.gla_kv_heads < 1 or self.num_heads % self.gla_kv_heads):
            raise ValueError(f"gla_kv_heads={self.gla_kv_heads} must divide "
                             f"num_heads={self.num_heads}")
        if self.block_style not in BLOCK_STYLES:
            raise ValueError(f"block_style must be one of {BLOCK_STYLES}, got {self.block_style!r}")
        if self.feature_map is not None and self.feature_map not in FEATURE_MAPS:
            raise ValueError(f"feature_map must be None or one of {FEATURE_MAPS}, "
                             f"got {self.feature_map!r}")
        if self.num_experts < 0 or not 1 <= self.num_experts_per_tok:
            raise ValueError(f"num_experts must be >= 0 and num_experts_per_tok >= 1, got "
                             f"{self.num_experts=}, {self.num_experts_per_tok=}")
        if self.num_experts and self.num_experts_per_tok > self.num_experts:
            raise ValueError(f"num_experts_per_tok={self.num_experts_per_tok} exceeds "
                             f"num_experts={self.num_experts}")
        if self.lightning_decay not in ("minimax", "fla"):
            raise ValueError(f"lightning_decay must be 'minimax' or 'fla', got {self.lightning_decay!r}")
        if self.implementation not in (None, "pallas", "xla", "naive"):
            raise ValueError(f"implementation must be None, 'pallas', 'xla' or 'naive', "
                             f"got {self.implementation!r}")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in ("float32", "bfloat16", "float16", "float64"):
                raise ValueError(f"{name} must be 'float32', 'bfloat16', 'float16' or 'float64', "
                                 f"got {getattr(self, name)!r}")
        if "gla" in self.layer_pattern:
            for name, width in (("key_dim", self.key_dim), ("value_dim", self.value_dim)):
                if width % self.num_heads:
                    raise ValueError(f"GLA {name}={width} must be divisible by num_heads={self.num_heads}")

    # Derived sizes.
    @property
    def kv_heads(self) -> int:
        return self.num_heads if self.num_kv_heads is None else self.num_kv_heads

    @property
    def attn_head_dim(self) -> int:
        return self.hidden_size // self.num_heads if self.head_dim is None else self.head_dim

    @property
    def key_dim(self) -> int:
        return int(self.hidden_size * self.expand_k)

    @property
    def value_dim(self) -> int:
        return int(self.hidden_size * self.expand_v)

    @property
    def mlp_size(self) -> int:
        if self.intermediate_size is not None:
            return self.intermediate_size
        return 256 * math.ceil(int(self.hidden_size * self.hidden_ratio * 2 / 3) / 256)

    @property
    def d_inner(self) -> int:
        return self.expand * self.hidden_size

    @property
    def mamba_dt_rank(self) -> int:
        return math.ceil(self.hidden_size / 16) if self.dt_rank is None else self.dt_rank

    @property
    def mixers(self) -> tuple[str, ...]:
        """The mixer kind of every block, in order."""
        reps = self.num_layers // len(self.layer_pattern)
        return self.layer_pattern * reps

    def replace(self, **changes) -> LMConfig:
        return dataclasses.replace(self, **changes)

    # Presets.
    @classmethod
    def tiny(cls, kind: str = "gla", **overrides) -> LMConfig:
        """A byte-level model small enough for CPU tests (kind: a mixer or "hybrid")."""
        base = dict(vocab_size=256, hidden_size=64, num_layers=2, num_heads=2, d_state=8)
        if kind == "hybrid":
            base.update(num_layers=4, layer_pattern=("lightning", "gla", "mamba", "attention"))
        elif kind == "mamba":
            base.update(layer_pattern=("mamba",), mlp=False)
        else:
            base.update(layer_pattern=(kind,))
        return cls(**{**base, **overrides})

    @classmethod
    def gla_340m(cls, **overrides) -> LMConfig:
        """FLA's gla_340M: hidden 1024, 24 layers, 4 heads (K 128, V 256), vocab 32000, tied."""
        return cls(**{**dict(vocab_size=32000, hidden_size=1024, num_layers=24, num_heads=4,
                             layer_pattern=("gla",), norm_eps=1e-6, tie_embeddings=True), **overrides})

    @classmethod
    def lightning_340m(cls, **overrides) -> LMConfig:
        """gla_340m's sizes with MiniMax-style lightning mixers (8 heads of 128)."""
        return cls(**{**dict(vocab_size=32000, hidden_size=1024, num_layers=24, num_heads=8,
                             layer_pattern=("lightning",), tie_embeddings=True), **overrides})

    @classmethod
    def transformer_340m(cls, **overrides) -> LMConfig:
        """Softmax baseline at gla_340m's sizes: 16 heads of 64, RoPE, SwiGLU 2816."""
        return cls(**{**dict(vocab_size=32000, hidden_size=1024, num_layers=24, num_heads=16,
                             layer_pattern=("attention",), tie_embeddings=True), **overrides})

    @classmethod
    def mamba_370m(cls, **overrides) -> LMConfig:
        """mamba_ssm's mamba-370m: d_model 1024, 48 Mamba blocks, no MLP, vocab 50280, tied;
        mamba_ssm's initialisation. Its blocks run as a scan (`scan_layers`): unrolled, its 48
        layers take over 90 s to compile on the GPU, and their step time is not yet measured."""
        return cls(**{**dict(vocab_size=50280, hidden_size=1024, num_layers=48,
                             layer_pattern=("mamba",), mlp=False, norm_eps=1e-5,
                             mamba_init="mamba_ssm", scan_layers=True,
                             tie_embeddings=True), **overrides})

    @classmethod
    def minimax_hybrid_340m(cls, **overrides) -> LMConfig:
        """MiniMax-01's layout at 340M scale: seven lightning blocks, then one softmax block."""
        return cls(**{**dict(vocab_size=32000, hidden_size=1024, num_layers=24, num_heads=8,
                             layer_pattern=("lightning",) * 7 + ("attention",),
                             tie_embeddings=True), **overrides})

    @classmethod
    def preset(cls, name: str, **overrides) -> LMConfig:
        """A preset by name: tiny, tiny_<kind>, gla_340m, lightning_340m, transformer_340m, ..."""
        if name.startswith("tiny_"):
            return cls.tiny(name[len("tiny_"):], **overrides)
        presets = {"tiny": cls.tiny, "gla_340m": cls.gla_340m, "lightning_340m": cls.lightning_340m,
                   "transformer_340m": cls.transformer_340m, "mamba_370m": cls.mamba_370m,
                   "minimax_hybrid_340m": cls.minimax_hybrid_340m}
        if name not in presets:
            raise ValueError(f"unknown preset {name!r}; choose from {sorted(presets)} or tiny_<kind>")
        return presets[name](**overrides)
