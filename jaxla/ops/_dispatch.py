"""The one dispatcher every op goes through: pick the implementation, fall back, explain refusals."""

from __future__ import annotations

from collections.abc import Callable

from jaxla.ops import _checks as checks


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
