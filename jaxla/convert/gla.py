"""FLA's GLA checkpoints (`GLAForCausalLM`, model_type "gla", e.g. fla-hub/gla-340M-15B).

Config fields read (fla `GLAConfig`): vocab_size, hidden_size, num_hidden_layers, num_heads,
num_kv_heads, expand_k, expand_v, hidden_ratio, intermediate_size, feature_map,
use_short_conv, conv_size, use_output_gate, clamp_min, hidden_act ("swish"), elementwise_affine,
norm_eps, fuse_norm (names the output norm), tie_word_embeddings, initializer_range,
eos_token_id. FLA's block builds its GLA layer with gate_logit_normalizer = gate_low_rank_dim =
16 whatever the config says; attn_mode, use_gk, use_gv and the fuse_* kernels do not change the
numbers. Not convertible (one error each): hybrid `attn` layers, `attnres_block_size`,
hidden_act other than "swish".
"""

from __future__ import annotations

from jaxla.convert.mapping import Entry, entry
from jaxla.models.config import LMConfig

MODEL_TYPE = "gla"
ARCHITECTURE = "GLAForCausalLM"
# FLA's GLABlock does not pass these to the layer, so every FLA GLA model has the defaults.
FLA_GATE_LOGIT_NORMALIZER = 16.0
FLA_GATE_LOW_RANK_DIM = 16


def _mlp_size(hidden: int, hidden_ratio, intermediate_size) -> int:
    if intermediate_size is not None:
        return int(intermediate_size)
    ratio = 4 if hidden_ratio is None else hidden_ratio
    inter = int(hidden * ratio * 2 / 3)
    return 256 * ((inter + 256 - 1) // 256)


def config_from_hf(hf: dict) -> LMConfig:
    unsupported = []
    if hf.get("attn") is not None:
        unsupported.append(f"attn={hf['attn']!r} (hybrid softmax-attention layers)")
    if hf.get("attnres_block_size") is not None:
        unsupported.append(f"attnres_block_size={hf['attnres_block_size']!r}")
    if hf.get("hidden_act", "swish") != "swish":
        unsupported.append(f"hidden_act={hf['hidden_act']!r} (only 'swish')")
    if unsupported:
        raise ValueError(f"FLA GLA config: not convertible: {'; '.join(unsupported)}")
    hidden = int(hf["hidden_size"])
    num_heads = int(hf.get("num_heads", 4))
    return LMConfig(
        vocab_size=int(hf["vocab_size"]), hidden_size=hidden,
        num_layers=int(hf["num_hidden_layers"]), layer_pattern=("gla",), num_heads=num_heads,
        gla_kv_heads=hf.get("num_kv_heads"), expand_k=float(hf.get("expand_k", 0.5)),
        expand_v=float(hf.get("expand_v", 1.0)),
        hidden_ratio=int(hf.get("hidden_ratio") or 4),
        intermediate_size=_mlp_size(hidden, hf.get("hidden_ratio"), hf.get("intermediate_size")),
        gate_low_rank_dim=FLA_GATE_LOW_RANK_DIM, gate_logit_normalizer=FLA_GATE_LOGIT_NORMALIZER,
        use_output_gate=bool(hf.get("use_output_gate", True)),
        use_short_conv=bool(hf.get("use_short_conv", False)), conv_size=int(hf.get("conv_size", 4)),
        feature_map=hf.get("feature_map"), clamp_min=hf.get("clamp_min"),
        norm_eps=float(hf.get("norm_eps", 1e-6)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        initializer_range=float(hf.get("initializer_range", 0.02)))


def check_exportable(config: LMConfig) -> None:
    problems = []
    if set(config.layer_pattern) != {"gla"}:
        problems.append(f"layer_pattern={config.layer_pattern} (FLA's GLA model is all 'gla')")
    if config.gate_logit_normalizer != FLA_GATE_LOGIT_NORMALIZER:
        problems.append(f"gate_logit_normalizer={config.gate_logit_normalizer} (FLA: 16)")
    if config.gate_low_rank_dim != FLA_GATE_LOW_RANK_DIM:
        problems.append(f"gate_low_rank_dim={config.gate_low_rank_dim} (FLA: 16)")
    if not config.mlp or config.num_experts:
        problems.append("an MLP other than one SwiGLU per block")
    _check_plain_blocks(config, problems)
    if problems:
        raise ValueError(f"cannot export as FLA GLA: {'; '.join(problems)}")


def _check_plain_blocks(config: LMConfig, problems: list[str]) -> None:
    if config.block_style != "prenorm":
        problems.append(f"block_style={config.block_style!r} (only 'prenorm')")
    for name in ("attention_residual", "linear_residual", "mlp_residual"):
        if getattr(config, name) != (1.0, 1.0):
            problems.append(f"{name}={getattr(config, name)} (only (1, 1))")


def config_to_hf(config: LMConfig, eos_token_id: int | None) -> dict:
    check_exportable(config)
    return {
        "architectures": [ARCHITECTURE], "model_type": MODEL_TYPE,
        "vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_layers, "num_heads": config.num_heads,
        "num_kv_heads": config.gla_kv_heads, "expand_k": config.expand_k,
        "expand_v": config.expand_v, "hidden_ratio": config.hidden_ratio,
        "intermediate_size": config.mlp_size, "feature_map": config.feature_map,
        "attn_mode": "chunk", "use_short_conv": config.use_short_conv,
        "conv_size": config.conv_size, "use_output_gate": config.use_output_gate,
        "clamp_min": config.clamp_min, "hidden_act": "swish", "elementwise_affine": True,
        "norm_eps": config.norm_eps, "attn": None, "fuse_norm": True, "fuse_swiglu": True,
        "fuse_cross_entropy": True, "tie_word_embeddings": config.tie_embeddings,
        "initializer_range": config.initializer_range, "eos_token_id": eos_token_id,
        "bos_token_id": None, "pad_token_id": None, "use_cache": True,
    }


def output_norm_name(hf: dict) -> str | None:
    """FLA names the per-head output norm by whether it is fused with the swish gate; None when
    it has no learnable scale."""
    if hf.get("elementwise_affine", True) is False:
        return None
    fused = (hf.get("fuse_norm", True) and hf.get("use_output_gate", True)
             and hf.get("hidden_act", "swish") == "swish")
    return "g_norm_swish_gate" if fused else "g_norm"


def entries(config: LMConfig, hf: dict) -> list[Entry]:
    out = [entry("model.embeddings.weight", "embed.embedding", "same"),
           entry("model.norm.weight", "norm.weight", "same")]
    if not config.tie_embeddings:
        out.append(entry("lm_head.weight", "lm_head", "linear"))
    norm = output_norm_name(hf)
    for i in range(config.num_layers):
        hf_p, jx = f"model.layers.{i}.", f"blocks.{i}."
        out += [entry(hf_p + "attn_norm.weight", jx + "attn_norm.weight", "same"),
                entry(hf_p + "mlp_norm.weight", jx + "mlp_norm.weight", "same")]
        for name in ("q_proj", "k_proj", "v_proj", "o_proj") + (
                ("g_proj",) if config.use_output_gate else ()):
            out.append(entry(f"{hf_p}attn.{name}.weight", f"{jx}mixer.{name}.kernel", "linear"))
        out += [entry(hf_p + "attn.gk_proj.0.weight", jx + "mixer.gk_proj.layers.0.kernel",
                      "linear"),
                entry(hf_p + "attn.gk_proj.1.weight", jx + "mixer.gk_proj.layers.1.kernel",
                      "linear"),
                entry(hf_p + "attn.gk_proj.1.bias", jx + "mixer.gk_proj.layers.1.bias", "same")]
        if norm is None:
            out.append(entry(None, jx + "mixer.g_norm.weight", "ones"))
        else:
            out.append(entry(f"{hf_p}attn.{norm}.weight", jx + "mixer.g_norm.weight", "same"))
        if config.use_short_conv:
            for c in ("q_conv1d", "k_conv1d", "v_conv1d"):
                out.append(entry(f"{hf_p}attn.{c}.weight", f"{jx}mixer.{c}.weight", "conv"))
        for name in ("gate_proj", "up_proj", "down_proj"):
            out.append(entry(f"{hf_p}mlp.{name}.weight", f"{jx}mlp.{name}.kernel", "linear"))
    return out
