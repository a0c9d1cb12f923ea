"""Language models over `jaxla.layers`: `LMConfig` presets, `CausalLM` and `generate`."""

from jaxla.models.config import MIXER_KINDS, LMConfig
from jaxla.models.generate import Sampling, generate, generate_stream, sample_logits
from jaxla.models.lm import Block, CausalLM, head_logits, make_mixer

__all__ = [
    "MIXER_KINDS",
    "Block",
    "CausalLM",
    "LMConfig",
    "Sampling",
    "generate",
    "generate_stream",
    "head_logits",
    "make_mixer",
    "sample_logits",
]
