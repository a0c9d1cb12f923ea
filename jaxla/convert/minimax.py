"""Hugging Face transformers' MiniMax (`MiniMaxForCausalLM`, model_type "minimax": MiniMax-01's
lightning + softmax hybrid with Mixtral-style MoE MLPs).

On disk (what `save_pretrained` writes and the hub holds) the experts are Mixtral's
`block_sparse_moe.experts.<e>.w1` (gate), `w3` (up), `w2` (down) and the router
`block_sparse_moe.gate`. Config fields read (`MiniMaxConfig`): vocab_size, hidden_size, intermediate_size (per expert),
num_hidden_layers, num_attention_heads, num_key_value_heads, head_dim, layer_types
("linear_attention" -> "lightning", "full_attention" -> "attention"), num_local_experts,
num_experts_per_tok, rms_norm_eps, rope_parameters (rope_theta; "default" rope only), the
{full_attn,linear_attn,mlp}_{alpha,beta}_factor residual scales, tie_word_embeddings,
initializer_range, eos_token_id. The lightning layers' output norm has transformers' fixed eps
1e-6, their decay MiniMax's (`lightning_decay="minimax"`), and the blocks MiniMax's residual
wiring (`block_style="minimax"`). The checkpoint's slope_rate buffers are checked against that
decay; its query/key/diagonal decay buffers are derived from it and recomputed on export.
Not convertible (one error each): sliding_window, a rope type other than "default" or a partial
rotary factor, hidden_act other than "silu".
"""

from __future__ import annotations

import numpy as np

from jaxla.convert.mapping import Entry, entry
from jaxla.models.config import LMConfig
from jaxla.ops.lightning import lightning_decay

MODEL_TYPE = "minimax"
ARCHITECTURE = "MiniMaxForCausalLM"
LIGHTNING_NORM_EPS = 1e-6  # MiniMaxLightningAttention's RMSNorm keeps its default eps
LAYER_KINDS = {"linear_attention": "lightning", "full_attention": "attention"}
DECAY_BUFFERS = ("slope_rate", "query_decay", "key_decay", "diagonal_decay")


def _period(kinds: list[str]) -> tuple[str, ...]:
    """The shortest pattern that repeats to `kinds` (its length divides len(kinds))."""
    n = len(kinds)
    for p in range(1, n + 1):
        if n % p == 0 and kinds == kinds[:p] * (n // p):
            return tuple(kinds[:p])
    return tuple(kinds)


def _rope_theta(hf: dict, problems: list[str]) -> float:
    rope = hf.get("rope_parameters") or {}
    if rope.get("rope_type", "default") != "default":
        problems.append(f"rope_parameters.rope_type={rope['rope_type']!r} (only 'default')")
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
        problems.append(f"partial_rotary_factor={rope['partial_rotary_factor']}")
    return float(rope.get("rope_theta", hf.get("rope_theta", 1e6)))


def config_from_hf(hf: dict) -> LMConfig:
    problems = []
    if hf.get("sliding_window") is not None:
        problems.append(f"sliding_window={hf['sliding_window']}")
    if hf.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act={hf['hidden_act']!r} (only 'silu')")
    theta = _rope_theta(hf, problems)
    layers = int(hf["num_hidden_layers"])
    types = hf.get("layer_types") or [
        "full_attention" if (i + 1) % 2 else "linear_attention" for i in range(layers)]
    unknown = sorted(set(types) - set(LAYER_KINDS))
    if unknown or len(types) != layers:
        problems.append(f"layer_types={types!r} (need {layers} of {sorted(LAYER_KINDS)})")
    if problems:
        raise ValueError(f"transformers MiniMax config: not convertible: {'; '.join(problems)}")
    heads = int(hf["num_attention_heads"])
    hidden = int(hf["hidden_size"])
    pair = lambda name: (float(hf.get(f"{name}_alpha_factor", 1)),  # noqa: E731
                         float(hf.get(f"{name}_beta_factor", 1)))
    return LMConfig(
        vocab_size=int(hf["vocab_size"]), hidden_size=hidden, num_layers=layers,
        layer_pattern=_period([LAYER_KINDS[t] for t in types]), num_heads=heads,
        num_kv_heads=int(hf.get("num_key_value_heads") or heads),
        head_dim=int(hf.get("head_dim") or hidden // heads),
        intermediate_size=int(hf["intermediate_size"]),
        num_experts=int(hf.get("num_local_experts", 8)),
        num_experts_per_tok=int(hf.get("num_experts_per_tok", 2)),
        block_style="minimax", attention_residual=pair("full_attn"),
        linear_residual=pair("linear_attn"), mlp_residual=pair("mlp"),
        lightning_decay="minimax", lightning_norm_eps=LIGHTNING_NORM_EPS, rope_theta=theta,
        norm_eps=float(hf.get("rms_norm_eps", 1e-5)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        initializer_range=float(hf.get("initializer_range", 0.02)))


def config_to_hf(config: LMConfig, eos_token_id: int | None, block_size: int = 256) -> dict:
    problems = []
    if not set(config.layer_pattern) <= {"lightning", "attention"}:
        problems.append(f"layer_pattern={config.layer_pattern} (MiniMax has lightning and "
                        f"attention layers only)")
    if config.block_style != "minimax":
        problems.append(f"block_style={config.block_style!r} (MiniMax: 'minimax')")
    if not config.mlp or not config.num_experts:
        problems.append("no MoE MLP (MiniMax blocks always have one: num_experts >= 1)")
    if config.lightning_decay != "minimax":
        problems.append(f"lightning_decay={config.lightning_decay!r} (MiniMax: 'minimax')")
    eps = config.norm_eps if config.lightning_norm_eps is None else config.lightning_norm_eps
    if eps != LIGHTNING_NORM_EPS:
        problems.append(f"lightning norm eps {eps} (MiniMax: {LIGHTNING_NORM_EPS})")
    if problems:
        raise ValueError(f"cannot export as transformers MiniMax: {'; '.join(problems)}")
    kinds = {v: k for k, v in LAYER_KINDS.items()}
    out = {
        "architectures": [ARCHITECTURE], "model_type": MODEL_TYPE,
        "vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
        "intermediate_size": config.mlp_size, "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads, "num_key_value_heads": config.kv_heads,
        "head_dim": config.attn_head_dim, "hidden_act": "silu",
        "layer_types": [kinds[k] for k in config.mixers],
        "num_local_experts": config.num_experts,
        "num_experts_per_tok": config.num_experts_per_tok, "rms_norm_eps": config.norm_eps,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "sliding_window": None, "block_size": block_size,
        "tie_word_embeddings": config.tie_embeddings,
        "initializer_range": config.initializer_range, "eos_token_id": eos_token_id,
        "bos_token_id": None, "pad_token_id": None, "use_cache": True,
    }
    for name, field in (("full_attn", "attention_residual"), ("linear_attn", "linear_residual"),
                        ("mlp", "mlp_residual")):
        out[f"{name}_alpha_factor"], out[f"{name}_beta_factor"] = getattr(config, field)
    return out


def entries(config: LMConfig, hf: dict) -> list[Entry]:
    del hf
    out = [entry("model.embed_tokens.weight", "embed.embedding", "same"),
           entry("model.norm.weight", "norm.weight", "same")]
    if not config.tie_embeddings:
        out.append(entry("lm_head.weight", "lm_head", "linear"))
    for i, kind in enumerate(config.mixers):
        hf_p, jx = f"model.layers.{i}.", f"blocks.{i}."
        a = hf_p + "self_attn."
        out += [entry(hf_p + "input_layernorm.weight", jx + "attn_norm.weight", "same"),
                entry(hf_p + "post_attention_layernorm.weight", jx + "mlp_norm.weight", "same"),
                entry(hf_p + "block_sparse_moe.gate.weight", jx + "mlp.router", "linear")]
        for e in range(config.num_experts):
            x = f"{hf_p}block_sparse_moe.experts.{e}."
            out += [entry(x + "w1.weight", jx + "mlp.gate_proj", "expert", e),
                    entry(x + "w3.weight", jx + "mlp.up_proj", "expert", e),
                    entry(x + "w2.weight", jx + "mlp.down_proj", "expert", e)]
        if kind == "lightning":
            out += [entry(a + "qkv_proj.weight", jx + "mixer.qkv_proj.kernel", "linear"),
                    entry(a + "output_gate.weight", jx + "mixer.output_gate.kernel", "linear"),
                    entry(a + "out_proj.weight", jx + "mixer.out_proj.kernel", "linear"),
                    entry(a + "norm.weight", jx + "mixer.norm.weight", "same")]
        else:
            for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
                out.append(entry(f"{a}{name}.weight", f"{jx}mixer.{name}.kernel", "linear"))
    return out


def decay_buffers(config: LMConfig, layer_idx: int, block_size: int) -> dict[str, np.ndarray]:
    """transformers' MiniMaxLightningAttention buffers of one layer (float32)."""
    rate = -lightning_decay(config.num_heads, layer_idx, config.num_layers, "minimax")
    rate = rate.astype(np.float32)[:, None, None]  # [H, 1, 1]
    r = np.arange(1, block_size + 1, dtype=np.float32)
    query = np.exp(-rate * r[:, None])
    key = np.exp(-rate * (block_size - r[:, None]))
    diag = (r[:, None] - r[None, :])[None, None] * rate
    diag = np.exp(np.where(diag >= 0, -diag, -np.inf))
    return {"slope_rate": rate, "query_decay": query.astype(np.float32),
            "key_decay": key.astype(np.float32), "diagonal_decay": diag.astype(np.float32)}


def buffer_names(config: LMConfig) -> list[str]:
    return [f"model.layers.{i}.self_attn.{b}" for i, kind in enumerate(config.mixers)
            if kind == "lightning" for b in DECAY_BUFFERS]


def check_buffers(config: LMConfig, tensors: dict, source: str) -> None:
    """The checkpoint's slope rates must be the decay jaxla computes for each layer."""
    for i, kind in enumerate(config.mixers):
        name = f"model.layers.{i}.self_attn.slope_rate"
        if kind != "lightning" or name not in tensors:
            continue
        want = -lightning_decay(config.num_heads, i, config.num_layers, "minimax")
        got = np.asarray(tensors[name], np.float64).reshape(-1)
        if got.shape != want.shape or not np.allclose(got, want, rtol=1e-5, atol=0):
            raise ValueError(f"{source}: {name} = {got} differs from MiniMax's decay for layer {i} "
                             f"of {config.num_layers} ({want})")
