"""What XLA's lowered count of jaxla's layers adds to the formulas, for the tests' bounds."""

from jaxla.flops import xla
from jaxla.layers._common import RECURRENT_MAX_LEN
from jaxla.models.config import LMConfig
from jaxla.ops.reference.gla import SUB_CHUNK

CHUNK = 64  # the chunk size the layers' ops use (their default)


def within(measured, low, high):
    """low <= measured <= high, up to XLA's float32 accumulation (exact below 2^24)."""
    return low * (1 - xla.XLA_RTOL) <= measured <= high * (1 + xla.XLA_RTOL)


def einsum_excess(config: LMConfig, batch: int, seq_len: int, kind: str) -> int:
    """What XLA's lowered count adds to a chunked GLA layer: the three-operand einsums of the
    XLA path (q x exp(G_i - G_j) on the diagonal sub-blocks, q x gap on the others) become
    dot_generals without a contracted dimension, counted 2 FLOPs per product, not 1
    (tests/flops/test_xla_formulas.py::test_gla_xla_path; compiled XLA counts 1)."""
    if kind != "gla" or seq_len <= RECURRENT_MAX_LEN:
        return 0
    K = config.key_dim // config.num_heads
    c = min(SUB_CHUNK, CHUNK)
    M, n = CHUNK // c, -(-seq_len // CHUNK)
    return batch * config.num_heads * n * (M * c * c * K + (M * M * c * K if M > 1 else 0))


def bookkeeping(kind: str, seq_len: int) -> int:
    """Per call, not in the formulas: the chunked forms build their masks once (`jnp.tril` on
    C x C, on the c x c sub-chunks and on the M x M sub-chunk pairs: <= 3 FLOPs per element with
    the bool -> float conversion), and every loop and KV-cache write adds a few counter and index
    FLOPs (<= 32 here)."""
    chunked = kind in ("gla", "lightning") and seq_len > RECURRENT_MAX_LEN
    c = min(SUB_CHUNK, CHUNK)
    return (3 * (CHUNK**2 + c**2 + (CHUNK // c) ** 2) if chunked else 0) + 32
