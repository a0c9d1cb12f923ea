"""jaxla: hardware-efficient linear attention for JAX (GLA, Lightning Attention, Mamba)."""

__version__ = "0.1.0"
