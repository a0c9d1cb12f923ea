"""The one dispatcher every op goes through: pick the implementation, fall back, explain refusals."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from jaxla.ops import _checks as checks

# The kernel package behind each op; each exposes `unsupported(**inputs) -> reason | None`.
KERNEL_PACKAGES = {
    "gla": "pallas_kernels.gla",
    "simple_gla": "pallas_kernels.simple_gla",
    "lightning_attention": "pallas_kernels.simple_gla",
    "selective_scan": "pallas_kernels.selective_scan",
}


def kernel_refusal(op: str, **inputs) -> str | None:
    """Why `op`'s Pallas kernel cannot take inputs of these sizes and dtype, or None when it can.

    `inputs` are the keyword arguments of the kernel package's `unsupported`: `head_dim_k`,
    `head_dim_v`, `dtype` for the attention ops; `state_size`, `dtype` for the selective scan.
    The kernels are imported only here, when asked (they need Triton-capable JAX builds).
    """
    return importlib.import_module(KERNEL_PACKAGES[op]).unsupported(**inputs)


def dispatch(op: str, implementation, *, pallas: Callable, xla: Callable, naive: Callable,
             kernel_refuses: Callable[[], str | None]):
    """Run `op` with the chosen implementation.

    `implementation=None` means the Pallas kernel on GPU and the chunked XLA path elsewhere; on
    GPU, inputs the kernel does not take (`kernel_refuses()` gives the reason) fall back to the
    XLA path. An explicit "pallas" with such inputs is a ValueError carrying that reason.
    Each callable takes no arguments (the op closes over its validated inputs).
    """
    impl = checks.resolve_implementation(implementation, checks.IMPLEMENTATIONS, op)
    if impl == "pallas":
        reason = kernel_refuses()
        if reason is None:
            return pallas()
        if implementation == "pallas":
            raise ValueError(f"{op}(implementation='pallas'): {reason}; use implementation='xla'")
        impl = "xla"
    return naive() if impl == "naive" else xla()
