"""Hugging Face transformers' Mamba (`MambaForCausalLM`, model_type "mamba"; the
state-spaces/mamba-*-hf checkpoints).

Config fields read (`MambaConfig`): vocab_size, hidden_size, state_size, num_hidden_layers,
layer_norm_epsilon, expand, conv_kernel, time_step_rank ("auto" = ceil(hidden / 16)),
tie_word_embeddings, initializer_range, eos_token_id. The block is `x + mixer(norm(x))` with no
MLP, as in jaxla's mamba presets; residual_in_fp32 changes nothing in float32. Not convertible
(one error each): use_bias=True, use_conv_bias=False, hidden_act other than "silu".
"""

from __future__ import annotations

import math

from jaxla.convert.gla import _check_plain_blocks
from jaxla.convert.mapping import Entry, entry
from jaxla.models.config import LMConfig

MODEL_TYPE = "mamba"
ARCHITECTURE = "MambaForCausalLM"


def config_from_hf(hf: dict) -> LMConfig:
    unsupported = []
    if hf.get("use_bias", False):
        unsupported.append("use_bias=True (biases on in_proj / out_proj)")
    if not hf.get("use_conv_bias", True):
        unsupported.append("use_conv_bias=False")
    if hf.get("hidden_act", "silu") != "silu":
        unsupported.append(f"hidden_act={hf['hidden_act']!r} (only 'silu')")
    if unsupported:
        raise ValueError(f"transformers Mamba config: not convertible: {'; '.join(unsupported)}")
    hidden = int(hf["hidden_size"])
    rank = hf.get("time_step_rank", "auto")
    rank = math.ceil(hidden / 16) if rank == "auto" else int(rank)
    return LMConfig(
        vocab_size=int(hf["vocab_size"]), hidden_size=hidden,
        num_layers=int(hf["num_hidden_layers"]), layer_pattern=("mamba",), mlp=False,
        d_state=int(hf.get("state_size", 16)), d_conv=int(hf.get("conv_kernel", 4)),
        expand=int(hf.get("expand", 2)), dt_rank=rank,
        norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
        initializer_range=float(hf.get("initializer_range", 0.1)))


def config_to_hf(config: LMConfig, eos_token_id: int | None) -> dict:
    problems = []
    if set(config.layer_pattern) != {"mamba"}:
        problems.append(f"layer_pattern={config.layer_pattern} (Mamba models are all 'mamba')")
    if config.mlp:
        problems.append("mlp=True (transformers' Mamba blocks have no MLP)")
    _check_plain_blocks(config, problems)
    if problems:
        raise ValueError(f"cannot export as transformers Mamba: {'; '.join(problems)}")
    return {
        "architectures": [ARCHITECTURE], "model_type": MODEL_TYPE,
        "vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
        "state_size": config.d_state, "num_hidden_layers": config.num_layers,
        "layer_norm_epsilon": config.norm_eps, "expand": config.expand,
        "conv_kernel": config.d_conv, "use_bias": False, "use_conv_bias": True,
        "hidden_act": "silu", "time_step_rank": config.mamba_dt_rank,
        "intermediate_size": config.d_inner, "residual_in_fp32": True,
        "tie_word_embeddings": config.tie_embeddings,
        "initializer_range": config.initializer_range, "eos_token_id": eos_token_id,
        "bos_token_id": eos_token_id, "pad_token_id": eos_token_id, "use_cache": True,
    }


def entries(config: LMConfig, hf: dict) -> list[Entry]:
    del hf
    out = [entry("backbone.embeddings.weight", "embed.embedding", "same"),
           entry("backbone.norm_f.weight", "norm.weight", "same")]
    if not config.tie_embeddings:
        out.append(entry("lm_head.weight", "lm_head", "linear"))
    for i in range(config.num_layers):
        hf_p, jx = f"backbone.layers.{i}.", f"blocks.{i}."
        m = hf_p + "mixer."
        out += [entry(hf_p + "norm.weight", jx + "attn_norm.weight", "same"),
                entry(m + "A_log", jx + "mixer.A_log", "same"),
                entry(m + "D", jx + "mixer.D", "same"),
                entry(m + "conv1d.weight", jx + "mixer.conv1d.weight", "conv"),
                entry(m + "conv1d.bias", jx + "mixer.conv1d.bias", "same"),
                entry(m + "dt_proj.bias", jx + "mixer.dt_proj.bias", "same")]
        for name in ("in_proj", "x_proj", "dt_proj", "out_proj"):
            out.append(entry(f"{m}{name}.weight", f"{jx}mixer.{name}.kernel", "linear"))
    return out
