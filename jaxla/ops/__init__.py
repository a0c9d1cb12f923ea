"""jaxla's ops: GLA, simple GLA, Lightning Attention and Mamba's selective scan.

Every op returns `(output, final_state_or_None)` and takes `implementation`:
"pallas" (GPU kernel), "xla" (chunked pure JAX), "naive" (the step-by-step spec) or None
(pallas on GPU, xla elsewhere). Layouts follow FLA: `[B, T, H, K]`, time before heads.
"""

from jaxla.ops import packing
from jaxla.ops._checks import IMPLEMENTATIONS, Implementation, checking
from jaxla.ops._dispatch import kernel_refusal
from jaxla.ops.gla import gla, gla_recurrent
from jaxla.ops.lightning import (
    default_scale,
    lightning_attention,
    lightning_attention_recurrent,
    lightning_decay,
)
from jaxla.ops.selective_scan import selective_scan, selective_state_update
from jaxla.ops.simple_gla import simple_gla, simple_gla_recurrent

__all__ = [
    "IMPLEMENTATIONS",
    "Implementation",
    "checking",
    "default_scale",
    "gla",
    "gla_recurrent",
    "kernel_refusal",
    "lightning_attention",
    "lightning_attention_recurrent",
    "lightning_decay",
    "packing",
    "selective_scan",
    "selective_state_update",
    "simple_gla",
    "simple_gla_recurrent",
]
