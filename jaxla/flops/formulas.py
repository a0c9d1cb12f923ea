"""Hand-derived FLOP formulas: ops, layers, whole models, training steps.

Conventions (research/flops.md):

* 1 multiply-add = 2 FLOPs (XLA's, Kaplan's, PaLM's, MaxText's convention).
* Every formula returns a `Flops` with three parts, kept apart because hardware runs them on
  different units and XLA reports them apart:
  `dot` (matmuls, tensor cores), `other` (elementwise and reduction ops, 1 FLOP per element per
  op, like XLA) and `transcendentals` (exp, log, rsqrt, logistic, tanh: counted as XLA does,
  outside `flops`). `Flops.total = dot + other` is what XLA's `flops` key compares with.
* Elementwise functions are charged what XLA counts for jax.nn's implementation in jax 0.11.2
  (measured, table `ELEMENTWISE`): silu 4 FLOPs + 1 transcendental per element, sigmoid 3 + 1,
  log_sigmoid 8 + 2, softplus 6 + 2, softmax 4n - 1 + n per row of n, RMSNorm 4D + 1 + 1 per row.
* Backward (training) convention: `dot` x 2 exactly (dX and dW for every matmul: XLA measures
  3x forward for fwd+bwd); `other` x 2 as a convention (an elementwise op's backward is one or two
  ops per element); transcendentals x 0 (the backward reuses the forward's exp/logistic/rsqrt
  outputs). No rematerialisation (that would be hardware FLOPs, not model FLOPs).
* Shapes: `B` batch, `L`/`T` sequence length, `D` width, `H` heads, `K`/`V` key/value head dims,
  `C` chunk size, `N` state size. A formula of a chunked form counts the padded length
  `ceil(T / C) * C`, because that is what runs.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Literal

from jaxla.models.config import LMConfig

Mask = Literal["causal", "full", "masked"]
GlaAlgorithm = Literal["fla", "xla"]
ScanAlgorithm = Literal["convention", "sequential", "associative"]


@dataclasses.dataclass(frozen=True)
class Flops:
    """A FLOP count: `dot` (matmul) + `other` (elementwise) FLOPs, and transcendentals apart."""

    dot: int = 0
    other: int = 0
    transcendentals: int = 0

    @property
    def total(self) -> int:
        """FLOPs as XLA's `flops` counts them: matmul + elementwise, not transcendentals."""
        return self.dot + self.other

    def __add__(self, o: Flops) -> Flops:
        if not isinstance(o, Flops):
            return NotImplemented
        return Flops(self.dot + o.dot, self.other + o.other,
                     self.transcendentals + o.transcendentals)

    def __radd__(self, o):  # sum() starts from 0
        if o == 0:
            return self
        return self.__add__(o)

    def __sub__(self, o: Flops) -> Flops:
        if not isinstance(o, Flops):
            return NotImplemented
        return Flops(self.dot - o.dot, self.other - o.other,
                     self.transcendentals - o.transcendentals)

    def __mul__(self, n: int) -> Flops:
        if not isinstance(n, int) or isinstance(n, bool):
            return NotImplemented
        return Flops(self.dot * n, self.other * n, self.transcendentals * n)

    __rmul__ = __mul__

    def backward(self) -> Flops:
        """The backward pass under the module's convention: dot x2, other x2, transcendentals 0."""
        return Flops(2 * self.dot, 2 * self.other, 0)

    def with_backward(self) -> Flops:
        """Forward + backward."""
        return self + self.backward()


ZERO = Flops()

# What XLA counts per element for jax.nn's functions (jax 0.11.2, CPU, lowered = compiled):
# (flops, transcendentals). Measured by tests/flops/test_xla_formulas.py::test_elementwise_table.
ELEMENTWISE = {
    "silu": (4, 1),
    "sigmoid": (3, 1),
    "log_sigmoid": (8, 2),
    "softplus": (6, 2),
    "gelu_tanh": (8, 1),
    "relu": (1, 0),
    "exp": (0, 1),
}


def elementwise(n: int, fn: str | None = None, *, flops: int = 1,
                transcendentals: int = 0) -> Flops:
    """`n` elements through `fn` (a key of `ELEMENTWISE`) or through `flops` plain ops each."""
    if fn is not None:
        flops, transcendentals = ELEMENTWISE[fn]
    return Flops(other=n * flops, transcendentals=n * transcendentals)


# --------------------------------------------------------------------------------------------
# Dense building blocks.


def matmul(m: int, k: int, n: int, *, batch: int = 1) -> Flops:
    """`[batch, m, k] @ [batch, k, n]`: 2 m k n per batch element, exactly XLA's count."""
    return Flops(dot=2 * batch * m * k * n)


def linear(tokens: int, d_in: int, d_out: int, *, bias: bool = False) -> Flops:
    """A dense layer on `tokens` rows: `2 tokens d_in d_out` (+ one add per output for a bias)."""
    return matmul(tokens, d_in, d_out) + Flops(other=tokens * d_out if bias else 0)


def swiglu_activation(tokens: int, d_ff: int) -> Flops:
    """`silu(gate) * up` per unit of the SwiGLU MLP."""
    return elementwise(tokens * d_ff, "silu") + elementwise(tokens * d_ff)


def swiglu_mlp(tokens: int, d_model: int, d_ff: int) -> Flops:
    """SwiGLU MLP `down(silu(gate(x)) * up(x))`: `6 tokens D F` + silu and product per unit."""
    dense = linear(tokens, d_model, d_ff) * 2 + linear(tokens, d_ff, d_model)
    return dense + swiglu_activation(tokens, d_ff)


def mlp(tokens: int, d_model: int, d_ff: int, *, activation: str = "gelu_tanh",
        bias: bool = False) -> Flops:
    """Two-layer MLP `out(act(inp(x)))`: `4 tokens D F` + the activation (+ biases)."""
    return (linear(tokens, d_model, d_ff, bias=bias) + linear(tokens, d_ff, d_model, bias=bias)
            + elementwise(tokens * d_ff, activation))


def rmsnorm(tokens: int, dim: int, *, weight: bool = True) -> Flops:
    """RMSNorm over `dim` per row: square, mean (dim - 1 adds + 1 divide), + eps, rsqrt, scale."""
    per_row = 3 * dim + 1 + (dim if weight else 0)
    return Flops(other=tokens * per_row, transcendentals=tokens)


def softmax(rows: int, n: int) -> Flops:
    """Softmax over rows of `n`: max (n - 1), subtract, exp, sum (n - 1), divide: 4n - 1."""
    return Flops(other=rows * (4 * n - 1), transcendentals=rows * n)


def embedding(tokens: int, d_model: int) -> Flops:
    """A table lookup: no arithmetic on the table. `nnx.Embed` (`jnp.take`) still costs, as XLA
    counts it, 6 index ops per token (negative-index wrap, FILL_OR_DROP bounds checks) and one
    fill select per output element."""
    return Flops(other=tokens * (d_model + 6))


def lm_head(tokens: int, d_model: int, vocab: int) -> Flops:
    """Logits `x @ W^T`: `2 tokens D vocab`."""
    return linear(tokens, d_model, vocab)


def cross_entropy(tokens: int, vocab: int) -> Flops:
    """Mean token cross-entropy from logits, as optax's `softmax_cross_entropy_with_integer_labels`
    computes it (`logsumexp(logits) - logits[label]`, then the mean). Per row of `vocab`: the
    log-sum-exp's max, subtraction and sum, 3V - 2, plus 15 FLOPs of bookkeeping (the label's
    index wrap and the FILL_OR_DROP gather's bounds checks, logsumexp's -inf guard, sign/abs before
    the log, adding the max back, subtracting the label logit, the mean's add), and 6 per call
    (the mean's divide, scalar index checks): what XLA counts for it (jax 0.11.2, optax 0.2.8).
    Transcendentals: V exps + 1 log per row."""
    return Flops(other=tokens * (3 * vocab + 13) + 6, transcendentals=tokens * (vocab + 1))


def rope(tokens: int, heads: int, head_dim: int) -> Flops:
    """Rotary embedding of q or k (`jaxla.layers.apply_rope`, "rotate half"):
    `[x1 cos - x2 sin, x2 cos + x1 sin]` = 3 FLOPs per element. The angle tables are
    `rope_tables`, charged once per call."""
    return Flops(other=3 * tokens * heads * head_dim)


def rope_tables(seq_len: int, head_dim: int) -> Flops:
    """The cos/sin tables one `apply_rope` call builds for `seq_len` positions (batch-independent):
    inverse frequencies `theta^(-2i/d)` (3 ops + 1 pow per frequency), positions converted to
    float (1 each), angles (1 product per position and frequency), one cos and one sin per
    angle."""
    half = head_dim // 2
    return Flops(other=seq_len * (half + 1) + 3 * half,
                 transcendentals=seq_len * head_dim + half)


# --------------------------------------------------------------------------------------------
# Softmax attention.


def attention_core(batch: int, q_len: int, heads: int, head_dim: int, *, kv_len: int | None = None,
                   mask: Mask = "causal", softmax_ops: bool = True) -> Flops:
    """`softmax(q k^T) v` over `heads` heads of `head_dim` (grouped KV heads change no FLOP).

    mask="full": every query sees all `kv_len` keys: `4 B H q_len kv_len d` (= 4BL^2D for
    kv_len = q_len, MambaOut's fully visible count). mask="causal": only the lower triangle,
    diagonal included: `2 B H d L (L + 1)` (MambaOut/Kaplan's 2BL^2D plus the diagonal); with
    kv_len > q_len the queries are the last q_len positions. mask="masked": what an XLA
    implementation of masked attention runs (`jax.nn.dot_product_attention(implementation="xla")`,
    jaxla's `Attention` on CPU): the full q_len x kv_len matrix plus one select per score (the
    mask itself is built by the caller: see `attention_layer`). The scale (1 FLOP per score) and
    the softmax are charged on the scores counted.
    """
    kv_len = q_len if kv_len is None else kv_len
    if mask in ("full", "masked"):
        scores = q_len * kv_len
    elif mask == "causal":
        if kv_len < q_len:
            raise ValueError(f"causal attention needs kv_len >= q_len, got {q_len=}, {kv_len=}")
        first = kv_len - q_len + 1  # keys seen by the first query
        scores = q_len * first + q_len * (q_len - 1) // 2
    else:
        raise ValueError(f"mask must be 'causal', 'full' or 'masked', got {mask!r}")
    bh = batch * heads
    out = Flops(dot=4 * bh * scores * head_dim)
    if mask == "masked":
        out += Flops(other=bh * scores)
    if softmax_ops:
        # scale 1 + softmax (max, sub, sum, div: ~4) per score, exp per score.
        out += Flops(other=bh * (scores + 4 * scores - q_len), transcendentals=bh * scores)
    return out


def transformer_layer(batch: int, seq_len: int, d_model: int, *, mask: Mask = "full") -> Flops:
    """The classic layer count, matmuls only: `24 B L D^2` (QKV 6, out 2, MLP with 4D hidden 16)
    + the attention core, `4 B L^2 D` fully visible or `2 B D L (L+1)` causal (MambaOut Eq. 6).
    Softmax, scaling, the activation, norms and residuals are left out, as in the papers."""
    tokens = batch * seq_len
    dense = Flops(dot=24 * tokens * d_model * d_model)
    core = attention_core(batch, seq_len, 1, d_model, mask=mask, softmax_ops=False)
    return dense + core


# --------------------------------------------------------------------------------------------
# Linear attention: GLA and simple GLA (Lightning).


def _pad(seq_len: int, chunk: int) -> tuple[int, int]:
    n = -(-seq_len // chunk)
    return n, n * chunk


def gla_chunked(batch: int, seq_len: int, heads: int, head_k: int, head_v: int, *,
                chunk_size: int = 64, sub_chunk: int = 16,
                algorithm: GlaAlgorithm = "fla") -> Flops:
    """Chunked GLA (per-channel gates), all heads, forward.

    Per head and chunk of C rows (n = ceil(T/C) chunks, c = min(sub_chunk, C) rows per sub-chunk,
    M = C/c sub-chunks; FLA's `chunk_gla` and jaxla's XLA path use c = 16):

    * state contribution `(k e^{G_C - G})^T v` and inter-chunk output `(q e^G) S`: 2CKV each;
    * intra-chunk scores: pairs of different sub-chunks through a matmul of gate-scaled q and k,
      pairs inside one sub-chunk exactly (`sum_k q_ik k_jk e^{G_ik - G_jk}`, 4 FLOPs + 1 exp per
      (i, j, k), no tensor cores) — the secondary chunking that keeps every exponent <= 0;
    * `A V`.

    algorithm="fla": FLA's kernels: only the M(M-1)/2 strictly-lower sub-block pairs by matmul
    (C(C-c)K), `A V` as one dense C x C tile (2C^2V).
    algorithm="xla": jaxla's chunked XLA path: all M^2 sub-block pairs in one dense einsum
    (2C^2K, half of it masked), `A V` for them (2C^2V) and again for the diagonal sub-blocks
    (2CcV).
    Plus the gate work: in-chunk cumsum ((C-1)K), decay factors, the state recurrence (2KV per
    chunk), the output scale.
    The classic count without sub-chunking is `2LCK + 2LCV + 4LKV` per head.
    """
    C, K, V = chunk_size, head_k, head_v
    c = min(sub_chunk, C)
    M = C // c
    n, _ = _pad(seq_len, C)
    if algorithm not in ("fla", "xla"):
        raise ValueError(f"algorithm must be 'fla' or 'xla', got {algorithm!r}")
    # State contribution + inter-chunk output; gates: cumsum, q and k decay factors (sub, mul,
    # exp), the state recurrence, output combine + scale.
    per = Flops(dot=4 * C * K * V,
                other=(C - 1) * K + 3 * C * K + 2 * K * V + 2 * C * V,
                transcendentals=2 * C * K + K)
    # Diagonal sub-blocks, exactly: G_i - G_j, exp, q k product, sum over k.
    per += Flops(other=4 * M * c * c * K, transcendentals=M * c * c * K)
    # Off-diagonal sub-blocks: q and k rescaled to the sub-chunk (sub, exp, mul each) and the
    # M x M gap factors between sub-chunks (sub, exp, mask).
    sub = Flops(other=4 * C * K + 2 * M * M * K, transcendentals=2 * C * K + M * M * K)
    if algorithm == "fla":
        per += Flops(dot=C * (C - c) * K + 2 * C * C * V)
        if M > 1:
            per += sub
    else:
        per += Flops(dot=2 * C * c * V, other=M * c * c * K + M * c * c)  # diag A V, masks
        if M > 1:
            # every sub-block pair: q x gap broadcast product, scores, A V, select, combine
            per += sub + Flops(dot=2 * C * C * K + 2 * C * C * V,
                               other=M * M * c * K + M * M * K + C * V)
    return per * (batch * heads * n)


def gla_recurrent(batch: int, seq_len: int, heads: int, head_k: int, head_v: int) -> Flops:
    """GLA one token at a time: per head and token, decay the state (KV), outer product k^T v
    (KV), add (KV), read out q S (2KV) = 5KV, plus q scale (K) and K exps of the gate."""
    K, V = head_k, head_v
    per = Flops(other=3 * K * V + K, dot=2 * K * V, transcendentals=K)
    return per * (batch * seq_len * heads)


def simple_gla_chunked(batch: int, seq_len: int, heads: int, head_k: int, head_v: int, *,
                       chunk_size: int = 64, scale: bool = True) -> Flops:
    """Chunked simple GLA / Lightning Attention (one scalar decay per head and step), forward.

    Per head and chunk: scores `q k^T` 2C^2K, decay mask `exp(G_i - G_j)` on the C x C tile,
    `A V` 2C^2V, state contribution and inter-chunk output 2CKV each: the classic
    `2LCK + 2LCV + 4LKV` per head; plus the gate cumsum (C - 1), the decay factors, the state
    recurrence (2KV per chunk), combining the intra- and inter-chunk outputs and the output scale
    (scale=False: no scale, MiniMax's lightning convention).
    """
    C, K, V = chunk_size, head_k, head_v
    n, _ = _pad(seq_len, C)
    dot = 2 * C * C * K + 2 * C * C * V + 4 * C * K * V
    # mask: G_i - G_j, select, exp, causal multiply; scores * decay; k and q decay factors;
    # state recurrence; combine (+ scale); cumsum.
    other = (4 * C * C + C + 2 * C * K + 2 * K * V + (1 + int(scale)) * C * V + (C - 1))
    trans = C * C + 2 * C + 1
    return Flops(dot=dot, other=other, transcendentals=trans) * (batch * heads * n)


def simple_gla_recurrent(batch: int, seq_len: int, heads: int, head_k: int, head_v: int, *,
                         scale: bool = True, broadcast_gate: bool = True) -> Flops:
    """Simple GLA one token at a time: 5KV per head and token + q scale (K; none with
    scale=False). Gate: jaxla's recurrent path runs GLA's step with the scalar gate broadcast to
    the K key rows (broadcast_gate=True), K exps per head and step; 1 would do (False)."""
    K, V = head_k, head_v
    per = Flops(other=3 * K * V + K * int(scale), dot=2 * K * V,
                transcendentals=K if broadcast_gate else 1)
    return per * (batch * seq_len * heads)


# --------------------------------------------------------------------------------------------
# Mamba's selective scan.


def associative_scan_ops(n: int) -> tuple[int, int]:
    """(combines, interleaved elements) of `jax.lax.associative_scan` over n elements, one leaf.

    jax's recursion: combine n//2 adjacent pairs, scan the result, combine the odd results with
    the remaining even elements, then interleave (pad + add: 1 FLOP per output element). About
    2n combines and 2n interleave adds, against n - 1 combines for a sequential scan.
    """
    if n < 2:
        return 0, 0
    half = n // 2
    combines, interleaved = associative_scan_ops(half)
    combines += half + ((half - 1) if n % 2 == 0 else half)
    return combines, interleaved + n


def selective_scan(batch: int, seq_len: int, d_inner: int, d_state: int, *, with_d: bool = True,
                   with_z: bool = True, delta_bias: bool = True, delta_softplus: bool = True,
                   algorithm: ScanAlgorithm = "convention", scan_chunk: int = 128) -> Flops:
    """Mamba's selective scan `h_t = e^{dt A} h_{t-1} + dt B_t u_t`, `y_t = C_t h_t (+ D u_t)`,
    `out = y silu(z)`, forward, B sequences of L steps, D = d_inner channels, N = d_state.

    algorithm="convention": the community count, `9 B L D N` for the scan (Gu,
    state-spaces/mamba#110: discretisation, ~2L associative-scan combines, the C readout) plus
    `B L D` for the D skip and `B L D` for the z gate (VMamba's `flops_selective_scan_fn`);
    softplus, silu and the bias are ignored, and so is e^{dt A} (1 exp per (t, d, n)).
    algorithm="sequential": one step at a time (jaxla's "naive" spec, mamba_ssm's recurrent
    decode): dt A, exp, decay, dt u, (dt u) B, add, C h, sum over N = 6 D N per step.
    algorithm="associative": jaxla's XLA path: chunks of `scan_chunk` steps, each a
    `lax.associative_scan` of (a, b) pairs (3 FLOPs per combine, see `associative_scan_ops`),
    then `a_cum h + b_cum` and the C readout.
    The sequential and associative forms also count bias (1), softplus (6 + 2 exp), D skip (2) and
    z gate (silu 4 + 1 exp, product 1) per (t, d), as XLA does.
    """
    tokens = batch * seq_len
    BLD, N = tokens * d_inner, d_state
    if algorithm == "convention":
        return Flops(other=9 * BLD * N + BLD * (int(with_d) + int(with_z)))
    extras = Flops(other=BLD * (int(delta_bias) + 2 * int(with_d) + 5 * int(with_z)),
                   transcendentals=BLD * int(with_z))
    if delta_softplus:
        extras += elementwise(BLD, "softplus")
    if algorithm == "sequential":
        return Flops(other=6 * BLD * N, transcendentals=BLD * N) + extras
    if algorithm != "associative":
        raise ValueError(f"algorithm must be 'convention', 'sequential' or 'associative', "
                         f"got {algorithm!r}")
    c = min(scan_chunk, seq_len)
    n, padded = _pad(seq_len, c)
    combines, interleaved = associative_scan_ops(c)
    lanes = batch * n * d_inner * N  # independent scans of c steps
    per_lane = 3 * combines + 2 * interleaved  # two leaves (a, b) interleaved
    # dt A, (dt u) B, a_cum h + b_cum (2), C h, sum over N (N - 1 per (t, d)), dt u per (t, d)
    pointwise = batch * padded * d_inner * 6 * N
    return Flops(other=lanes * per_lane + pointwise,
                 transcendentals=batch * padded * d_inner * N) + extras


# --------------------------------------------------------------------------------------------
# Mixer layers, as described in LMConfig's docstring.


def _conv(tokens: int, width: int, kernel: int, *, bias: bool, act: bool) -> Flops:
    """Causal depthwise conv1d (`jaxla.layers.ShortConvolution`): per channel and token, the sum
    of `kernel` shifted products, `kernel` multiplies + `kernel - 1` adds (+ bias, + silu)."""
    out = Flops(other=tokens * width * (2 * kernel - 1 + int(bias)))
    if act:
        out += elementwise(tokens * width, "silu")
    return out


def gla_layer(config: LMConfig, batch: int, seq_len: int, *, algorithm: GlaAlgorithm = "fla",
              decode: bool = False) -> Flops:
    """FLA's GatedLinearAttention (research/fla.md §8): q, k `D -> key_dim`, v and the output gate
    `D -> value_dim`, low-rank forget gate `D -> r -> key_dim` (+ bias) through
    `logsigmoid / normalizer`, optional short convs (silu) on q, k, v, the GLA core, per-head
    RMSNorm times swish(gate), o `value_dim -> D`. decode=True: the recurrent core (one token at a
    time, no chunk padding) instead of the chunked one."""
    D, H = config.hidden_size, config.num_heads
    Kd, Vd, r = config.key_dim, config.value_dim, config.gate_low_rank_dim
    t = batch * seq_len
    out = linear(t, D, Kd) * 2 + linear(t, D, Vd)
    out += linear(t, D, r) + linear(t, r, Kd, bias=True)
    out += elementwise(t * Kd, "log_sigmoid") + elementwise(t * Kd)  # / gate_logit_normalizer
    if config.use_short_conv:
        out += _conv(t, 2 * Kd + Vd, config.conv_size, bias=False, act=True)
    if decode:
        out += gla_recurrent(batch, seq_len, H, Kd // H, Vd // H)
    else:
        out += gla_chunked(batch, seq_len, H, Kd // H, Vd // H, algorithm=algorithm)
    out += _gla_norm_gate(config, t)
    if config.use_output_gate:
        out += linear(t, D, Vd)
    return out + linear(t, Vd, D)


def _gla_norm_gate(config: LMConfig, tokens: int) -> Flops:
    """GLA's per-head RMSNorm of the core's output, times swish(gate) when it has the gate."""
    H, Vd = config.num_heads, config.value_dim
    out = rmsnorm(tokens * H, Vd // H)
    if config.use_output_gate:
        out += elementwise(tokens * Vd, "silu") + elementwise(tokens * Vd)
    return out


def lightning_layer(config: LMConfig, batch: int, seq_len: int, *, decode: bool = False) -> Flops:
    """MiniMax-01's lightning attention (`jaxla.layers.LightningAttention`): qkv `D -> 3 H d_h`
    with silu, constant per-head decay (simple GLA core; q scaled by `d_h^-0.5` only under
    `lightning_decay="fla"`: MiniMax's convention has no scale), RMSNorm over `H d_h`, sigmoid
    output gate `D -> H d_h`, out `H d_h -> D`. decode=True: the recurrent core."""
    D, H, dh = config.hidden_size, config.num_heads, config.attn_head_dim
    t = batch * seq_len
    scale = config.lightning_decay == "fla"
    out = linear(t, D, 3 * H * dh) + elementwise(3 * t * H * dh, "silu")
    if decode:
        out += simple_gla_recurrent(batch, seq_len, H, dh, dh, scale=scale)
    else:
        out += simple_gla_chunked(batch, seq_len, H, dh, dh, scale=scale)
    out += _lightning_norm_gate(t, H * dh) + linear(t, D, H * dh)
    return out + linear(t, H * dh, D)


def _lightning_norm_gate(tokens: int, width: int) -> Flops:
    """Lightning's RMSNorm over `H d_h` times the sigmoid output gate."""
    n = tokens * width
    return rmsnorm(tokens, width) + elementwise(n, "sigmoid") + elementwise(n)


def mamba_layer(config: LMConfig, batch: int, seq_len: int, *,
                scan: ScanAlgorithm = "convention", decode: bool = False) -> Flops:
    """mamba_ssm's Mamba block (`jaxla.layers.Mamba`), E = d_inner, R = dt_rank:
    in_proj `D -> 2E`, causal depthwise conv (d_conv taps + bias) and silu on x, x_proj
    `E -> R + 2N`, dt_proj `R -> E` (its bias is the scan's delta_bias), `A = -exp(A_log)`
    (E N negations and exps per call, whatever the batch and length), the selective scan with
    D skip and z gate, out_proj `E -> D`. decode=True: the sequential scan
    (`selective_state_update`, one step at a time)."""
    D, E, N, R = config.hidden_size, config.d_inner, config.d_state, config.mamba_dt_rank
    t = batch * seq_len
    out = linear(t, D, 2 * E)
    out += _conv(t, E, config.d_conv, bias=True, act=True)
    out += linear(t, E, R + 2 * N) + linear(t, R, E)
    out += Flops(other=E * N, transcendentals=E * N)  # A = -exp(A_log)
    out += selective_scan(batch, seq_len, E, N, algorithm="sequential" if decode else scan)
    return out + linear(t, E, D)


def attention_layer(config: LMConfig, batch: int, seq_len: int, *, mask: Mask = "causal",
                    kv_len: int | None = None) -> Flops:
    """Softmax attention with RoPE and grouped KV heads (`jaxla.layers.Attention`): q
    `D -> H d_h`, k, v `D -> KVH d_h`, RoPE on q and k (each call builds its own tables), the
    core, o `H d_h -> D`.

    Without `kv_len`: self-attention over the `seq_len` tokens. With `kv_len`: the `seq_len`
    queries are the last positions of a `kv_len` context (a decode step: seq_len = 1).
    mask="masked" is what the layer runs on XLA: the full matrix, a select per score, and the
    mask built once per call: `jnp.tril` of L x L (2 L^2 as XLA counts it, lowered) without a
    cache; with a cache (`kv_len` = its preallocated slots, all read) `seq_len x kv_len`
    comparisons of positions, the positions (`seq_len` adds) and the new length (1 add).
    """
    D, H, KVH, dh = config.hidden_size, config.num_heads, config.kv_heads, config.attn_head_dim
    t = batch * seq_len
    out = linear(t, D, H * dh) + linear(t, D, KVH * dh) * 2
    out += rope(t, H, dh) + rope(t, KVH, dh) + rope_tables(seq_len, dh) * 2
    out += attention_core(batch, seq_len, H, dh, kv_len=kv_len, mask=mask)
    if mask == "masked":
        if kv_len is None:
            out += Flops(other=2 * seq_len * seq_len)
        else:
            out += Flops(other=seq_len * kv_len + seq_len + 1)
    return out + linear(t, H * dh, D)


def mixer_layer(kind: str, config: LMConfig, batch: int, seq_len: int, *,
                conventions: Conventions | None = None, cache_len: int | None = None) -> Flops:
    """Forward FLOPs of one mixer of `kind` on B x L tokens (training/prefill form). GLA and
    Lightning run their recurrent form for `seq_len <= conventions.recurrent_max_len`.

    cache_len: the pass runs through the layer's decode cache (the prefill of
    `jaxla.models.generate(mode="cached")`): attention reads all `cache_len` preallocated KV
    slots (mask="masked"), and Mamba takes its one-step path when `seq_len == 1`.
    """
    cv = conventions or Conventions()
    short = seq_len <= cv.recurrent_max_len
    if kind == "gla":
        return gla_layer(config, batch, seq_len, algorithm=cv.gla, decode=short)
    if kind == "lightning":
        return lightning_layer(config, batch, seq_len, decode=short)
    if kind == "mamba":
        return mamba_layer(config, batch, seq_len, scan=cv.scan,
                           decode=cache_len is not None and seq_len == 1)
    if kind == "attention":
        if cache_len is not None:
            return attention_layer(config, batch, seq_len, mask="masked", kv_len=cache_len)
        return attention_layer(config, batch, seq_len, mask=cv.mask)
    raise ValueError(f"unknown mixer kind {kind!r}")


def mixer_step(kind: str, config: LMConfig, batch: int, position: int, *,
               cache_len: int | None = None) -> Flops:
    """One decode step of a mixer for the token at `position` (1-based): recurrent state for
    linear mixers, KV cache for attention.

    cache_len=None: an exact KV cache, the step attends `position` keys (itself included).
    cache_len=S: jaxla's `KVCache`, S slots preallocated and all read every step, the invalid
    ones masked (`attention_layer(mask="masked", kv_len=S)`); S >= position.
    """
    if kind == "gla":
        return gla_layer(config, batch, 1, decode=True)
    if kind == "lightning":
        return lightning_layer(config, batch, 1, decode=True)
    if kind == "mamba":
        return mamba_layer(config, batch, 1, decode=True)
    if kind == "attention":
        if cache_len is None:
            return attention_layer(config, batch, 1, mask="full", kv_len=position)
        if cache_len < position:
            raise ValueError(f"a KV cache of {cache_len=} slots cannot hold {position=}")
        return attention_layer(config, batch, 1, mask="masked", kv_len=cache_len)
    raise ValueError(f"unknown mixer kind {kind!r}")


# --------------------------------------------------------------------------------------------
# Whole models.


@dataclasses.dataclass(frozen=True)
class Conventions:
    """Counting choices for whole-model formulas.

    mask: "causal" (triangle, MaxText/FlashAttention/Kaplan: useful work), "full" (PaLM's MFU:
      the whole matrix) or "masked" (what XLA computes: the whole matrix, a select per score and
      the mask). gla: "fla" (FLA's kernel) or "xla" (jaxla's XLA path). scan: "convention"
      (9BLDN, Gu), "sequential" or "associative" (jaxla's XLA path).
    recurrent_max_len: GLA and Lightning layers run their recurrent form, not the chunked one,
      on sequences this short (FLA's layers switch at T <= 64; jaxla.layers follow).
    """

    mask: Mask = "causal"
    gla: GlaAlgorithm = "fla"
    scan: ScanAlgorithm = "convention"
    recurrent_max_len: int = 64


# What jaxla's layers run with implementation="xla": the conventions under which the formulas
# are held against XLA's count of the real layers and models.
XLA_PATH = Conventions(mask="masked", gla="xla", scan="associative")


def check_covered(config: LMConfig) -> None:
    """NotImplementedError for the options these formulas do not count: mixture-of-experts
    MLPs and GLA with grouped KV heads (their projections are smaller). GLA's feature map and
    the residual scales of `block_style="minimax"` are elementwise and left out."""
    if config.num_experts:
        raise NotImplementedError(f"FLOP formulas: num_experts={config.num_experts} (a "
                                  f"mixture-of-experts MLP) is not counted")
    if "gla" in config.layer_pattern and config.gla_kv_heads not in (None, config.num_heads):
        raise NotImplementedError(f"FLOP formulas: GLA with gla_kv_heads={config.gla_kv_heads} "
                                  f"< num_heads={config.num_heads} is not counted")


def block_extras(config: LMConfig, tokens: int) -> Flops:
    """Per block around the mixer: pre-norm + residual add, and the MLP sub-block when present."""
    check_covered(config)
    D = config.hidden_size
    out = rmsnorm(tokens, D) + Flops(other=tokens * D)
    if config.mlp:
        out += rmsnorm(tokens, D) + swiglu_mlp(tokens, D, config.mlp_size) + Flops(other=tokens * D)
    return out


def model_breakdown(config: LMConfig, batch: int, seq_len: int, *, logits_tokens: int | None = None,
                    loss: bool = False, conventions: Conventions | None = None
                    ) -> dict[str, Flops]:
    """Forward FLOPs of a `CausalLM` by part: "mixer:<kind>" (all layers of that kind),
    "mlp+norms" (the blocks' norms, residuals and MLPs), "final_norm", "lm_head", "loss".

    `logits_tokens`: positions that get logits (default all `batch * seq_len`; 1 per sequence for
    a generation step that needs only the last). loss=True adds the cross-entropy.
    """
    tokens = batch * seq_len
    logits_tokens = tokens if logits_tokens is None else logits_tokens
    parts: dict[str, Flops] = {"embedding": embedding(tokens, config.hidden_size)}
    for kind, n in Counter(config.mixers).items():
        parts[f"mixer:{kind}"] = mixer_layer(kind, config, batch, seq_len,
                                             conventions=conventions) * n
    parts["mlp+norms"] = block_extras(config, tokens) * config.num_layers
    parts["final_norm"] = rmsnorm(tokens, config.hidden_size)
    parts["lm_head"] = lm_head(logits_tokens, config.hidden_size, config.vocab_size)
    if loss:
        parts["loss"] = cross_entropy(logits_tokens, config.vocab_size)
    return parts


def model_forward(config: LMConfig, batch: int, seq_len: int, **kwargs) -> Flops:
    """Forward FLOPs of the whole model on B x L tokens (see `model_breakdown`)."""
    return sum(model_breakdown(config, batch, seq_len, **kwargs).values(), ZERO)


def _block_output_projection(kind: str, config: LMConfig, tokens: int) -> Flops:
    """The last matmul of a block and its residual add: the block's output is not needed by the
    backward pass, so a rematerialised block skips them."""
    D = config.hidden_size
    if config.mlp:
        width = config.mlp_size
    elif kind == "gla":
        width = config.value_dim
    elif kind == "mamba":
        width = config.d_inner
    else:
        width = config.num_heads * config.attn_head_dim
    return linear(tokens, width, D) + Flops(other=tokens * D)


def _recomputed(forward: Flops, outputs: int) -> Flops:
    """What the backward recomputes of a `recomputed` chain: its forward but for the product
    that makes its `outputs` elements (the backward needs only that product's factors, so XLA
    drops it)."""
    return forward - Flops(other=outputs)


def recomputed_chains(kind: str, config: LMConfig, tokens: int) -> Flops:
    """What the backward of one block of `kind` recomputes of the elementwise chains it wraps in
    `jaxla.layers._common.recomputed` (instead of saving their float32 intermediates): the
    RMSNorms, the SwiGLU activation, the short convolutions (taps, bias, silu), GLA's log-sigmoid
    gates and its norm and output gate, Lightning's qkv silu and its norm and output gate (see
    `_recomputed`). The SwiGLU chain holds the down projection, whose weight gradient reads the
    activation's product: that product is recomputed too (the projection is not). Likewise the
    block's norms are recomputed whole, their output for the weight gradients of the projections
    that read it (`jaxla.layers._common.input_projections`)."""
    D, H = config.hidden_size, config.num_heads
    out = rmsnorm(tokens, D)
    if config.mlp:
        F_ = config.mlp_size
        out += rmsnorm(tokens, D)
        out += swiglu_activation(tokens, F_)
    if kind == "gla":
        Kd, Vd = config.key_dim, config.value_dim
        # log_sigmoid, then / gate_logit_normalizer (the last op: its output is the op's input)
        out += _recomputed(elementwise(tokens * Kd, "log_sigmoid") + elementwise(tokens * Kd),
                           tokens * Kd)
        if config.use_short_conv:
            width = 2 * Kd + Vd
            out += _recomputed(_conv(tokens, width, config.conv_size, bias=False, act=True),
                               tokens * width)
        out += _recomputed(_gla_norm_gate(config, tokens), tokens * Vd)
    elif kind == "lightning":
        width = H * config.attn_head_dim
        out += _recomputed(elementwise(3 * tokens * width, "silu"), 3 * tokens * width)
        out += _recomputed(_lightning_norm_gate(tokens, width), tokens * width)
    elif kind == "mamba":
        E = config.d_inner
        out += _recomputed(_conv(tokens, E, config.d_conv, bias=True, act=True), tokens * E)
    return out


def recomputation(config: LMConfig, batch: int, seq_len: int, *,
                  conventions: Conventions | None = None) -> Flops:
    """What the backward pass of a training step recomputes (hardware FLOPs beyond model FLOPs).

    * The elementwise chains under `recomputed` (`recomputed_chains`, and the final norm): once
      more, with or without `config.remat` (inside a rematerialised block their backward still
      recomputes them after the block's forward has run again).
    * `config.remat`: every block's forward once more, but for its output projection and
      residual add (`_block_output_projection`: jax drops what the backward does not need).
    * scan="associative" (jaxla's XLA selective scan): each chunk's body is `jax.checkpoint`ed,
      so the scan core (discretisation, associative scan, readout) runs once more.
    """
    cv = conventions or Conventions()
    tokens = batch * seq_len
    D = config.hidden_size
    out = _recomputed(rmsnorm(tokens, D), tokens * D)  # the final norm
    for kind, n in Counter(config.mixers).items():
        out += recomputed_chains(kind, config, tokens) * n
    if config.remat:
        for kind, n in Counter(config.mixers).items():
            block = (mixer_layer(kind, config, batch, seq_len, conventions=cv)
                     + block_extras(config, tokens)
                     - _block_output_projection(kind, config, tokens))
            out += block * n
    if cv.scan == "associative" and "mamba" in config.mixers:
        core = selective_scan(batch, seq_len, config.d_inner, config.d_state, with_d=False,
                              with_z=False, delta_bias=False, delta_softplus=False,
                              algorithm="associative")
        out += core * config.mixers.count("mamba")
    return out


def training_step(config: LMConfig, batch: int, seq_len: int, *,
                  conventions: Conventions | None = None, recompute: bool = False) -> Flops:
    """One training step's model FLOPs: forward + cross-entropy + backward (see `Flops.backward`),
    no rematerialisation. recompute=True adds `recomputation` (hardware FLOPs, what XLA
    counts for jaxla's training step). The optimizer update (~10 FLOPs per parameter per step)
    is not included: it is per step, not per token, and below 0.1% at the usual batch sizes."""
    out = model_forward(config, batch, seq_len, loss=True, conventions=conventions).with_backward()
    if recompute:
        out += recomputation(config, batch, seq_len, conventions=conventions)
    return out


def training_flops_per_token(config: LMConfig, seq_len: int, *,
                             conventions: Conventions | None = None) -> float:
    """Model FLOPs per trained token (fwd + bwd, matmul + elementwise, causal triangle), for MFU:
    `MFU = training_flops_per_token x tokens/s / (devices x peak_flops)`."""
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len=}")
    return training_step(config, 1, seq_len, conventions=conventions).total / seq_len


# --------------------------------------------------------------------------------------------
# Parameters and the 6N rule.


def mixer_params(kind: str, config: LMConfig) -> int:
    """Parameters of one mixer (hand count of the architecture in LMConfig's docstring)."""
    D, H = config.hidden_size, config.num_heads
    if kind == "gla":
        Kd, Vd, r = config.key_dim, config.value_dim, config.gate_low_rank_dim
        groups = H // (config.gla_kv_heads or H)  # k, v, forget gate: `groups` heads each
        Kg, Vg = Kd // groups, Vd // groups
        n = D * Kd + D * Kg + D * Vg + D * r + r * Kg + Kg + Vd * D + Vd // H
        if config.use_output_gate:
            n += D * Vd
        if config.use_short_conv:
            n += (Kd + Kg + Vg) * config.conv_size
        return n
    if kind == "lightning":
        hd = H * config.attn_head_dim
        return D * 3 * hd + hd + D * hd + hd * D
    if kind == "mamba":
        E, N, R = config.d_inner, config.d_state, config.mamba_dt_rank
        return (D * 2 * E + E * config.d_conv + E + E * (R + 2 * N) + R * E + E
                + E * N + E + E * D)
    if kind == "attention":
        dh = config.attn_head_dim
        return D * H * dh + 2 * D * config.kv_heads * dh + H * dh * D
    raise ValueError(f"unknown mixer kind {kind!r}")


def param_count(config: LMConfig) -> int:
    """All parameters: embedding (+ untied head), mixers, MLPs (every expert and the router of a
    mixture of experts), norms."""
    D = config.hidden_size
    n = config.vocab_size * D * (1 if config.tie_embeddings else 2)
    n += sum(mixer_params(kind, config) for kind in config.mixers)
    per_block_norms = 2 if config.mlp else 1
    mlp = 3 * D * config.mlp_size
    if config.num_experts:
        mlp = config.num_experts * (mlp + D)
    n += config.num_layers * (per_block_norms * D + (mlp if config.mlp else 0))
    return n + D


def matmul_params(config: LMConfig) -> int:
    """N of the 6N rule: all parameters but an untied input embedding table (a lookup costs no
    FLOP; a tied table is the LM head's matmul). Vectors (norms, biases, A, D) stay in: < 0.1%."""
    n = param_count(config)
    if not config.tie_embeddings:
        n -= config.vocab_size * config.hidden_size
    return n


def six_n(config: LMConfig) -> int:
    """Kaplan's training approximation `6N` FLOPs per token (N = `matmul_params`, all
    parameters except an untied input embedding): ignores attention's L^2 term, the linear
    mixers' state and chunk work, the scan and every elementwise op."""
    return 6 * matmul_params(config)
