"""Peak FLOP/s per device, for MFU. Dense (no 2:4 sparsity) tensor-core numbers.

Sources: NVIDIA's datasheets (H100 Tensor Core GPU datasheet; H200 product page; A100 datasheet),
which quote tensor-core throughput "with sparsity": the dense figures below are half of those.

| device (jax `device_kind`)          | bf16/fp16 | TF32  | fp32 (no tensor cores) |
| H100 SXM ("NVIDIA H100 80GB HBM3")  | 989.4     | 494.7 | 66.9                   |
| H100 PCIe                           | 756.0     | 378.0 | 51.2                   |
| H100 NVL                            | 835.5     | 417.5 | 60.0                   |
| H200 SXM ("NVIDIA H200")            | 989.4     | 494.7 | 66.9                   |
| H200 NVL                            | 835.5     | 417.5 | 60.0                   |
| A100 (SXM4 / PCIe, 40 or 80 GB)     | 312.0     | 156.0 | 19.5                   |
(TFLOP/s.) float32 defaults to the TF32 column: XLA runs float32 dots on Ampere/Hopper tensor
cores in TF32 at JAX's default matmul precision; pass `tf32=False` for `precision=HIGHEST`.
CPUs and unknown devices: None (MFU is not meaningful there).
"""

from __future__ import annotations

import numpy as np

# name -> (bf16/fp16, tf32, fp32) in FLOP/s; matched in order against the lower-cased device kind.
_GPUS: tuple[tuple[tuple[str, ...], tuple[float, float, float]], ...] = (
    (("h100", "pcie"), (756.0e12, 378.0e12, 51.2e12)),
    (("h100", "nvl"), (835.5e12, 417.5e12, 60.0e12)),
    (("h100",), (989.4e12, 494.7e12, 66.9e12)),
    (("h200", "nvl"), (835.5e12, 417.5e12, 60.0e12)),
    (("h200",), (989.4e12, 494.7e12, 66.9e12)),
    (("a100",), (312.0e12, 156.0e12, 19.5e12)),
)


def _dtype_name(dtype) -> str:
    if isinstance(dtype, str):
        return dtype.lower()
    try:
        return np.dtype(dtype).name
    except TypeError:
        return str(getattr(dtype, "name", dtype)).lower()


def peak_flops(device_kind: str, dtype, *, tf32: bool = True) -> float | None:
    """Dense peak FLOP/s of one device for matmuls in `dtype`, or None when unknown (CPU).

    Args:
      device_kind: `jax.devices()[0].device_kind`, e.g. "NVIDIA H100 80GB HBM3".
      dtype: the compute dtype ("bfloat16", "float16", "float32", or a dtype).
      tf32: float32 at TF32 tensor-core speed (JAX's default precision on Ampere/Hopper) or at
        the plain fp32 rate.
    """
    kind = device_kind.lower()
    name = _dtype_name(dtype)
    for keys, (half, tf, fp32) in _GPUS:
        if all(k in kind for k in keys):
            if name in ("bfloat16", "float16"):
                return half
            if name == "float32":
                return tf if tf32 else fp32
            return None
    return None
