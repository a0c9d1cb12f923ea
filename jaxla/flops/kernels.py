"""What jaxla's Pallas kernels compute and move: FLOPs and HBM bytes of each `pallas_call`.

Each kernel declares a `pl.CostEstimate`; `tests/flops/test_kernel_costs.py` holds those
estimates against these formulas (and `jaxla.flops.report.count` substitutes the estimates for
XLA's count of a `pallas_call`). The formulas take the kernels' own shapes: sequence lengths
padded to whole chunks (`Tp`), head dims padded to powers of two, and the kernels' tiles
(`BlockSizes` of `pallas_kernels.<op>.config`); each function returns `{pallas_call name:
KernelCost}` for one op and direction, in the default (unpacked) configuration, on the
kernels' main path (GLA: the intra-chunk matmul path, the rule at ordinary gate strengths).

Conventions:

* `flops`: the arithmetic the kernel's program runs, summed over the grid. A matmul is
  2 x M x N x K, counted once even where a 16-bit operand is split into hi + lo halves for
  accuracy (those dots repeat a product); work that a tiling repeats (the intra-chunk scores of
  every V tile, the selective scan's recomputed states) is counted as often as it runs.
  Elementwise: 1 FLOP per arithmetic op per element, 2 per fused multiply-add, a sum over n
  elements n; exp / exp2 / log / log1p are transcendentals, not FLOPs, and a sigmoid is
  3 FLOPs + 1 exp, a softplus 4 + 2 (the kernels' `max(x, 0) + log1p(exp(-|x|))`).
* `bytes`: every operand read once and every result written once (XLA's convention for its own
  ops): the traffic floor. Tiles that re-read an operand (every V tile reads q, k and the gates)
  move more unless the caches hold the re-read blocks.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class KernelCost:
    """FLOPs (transcendentals apart) and HBM bytes of one `pallas_call`."""

    flops: int
    bytes: int


def _isz(dtype) -> int:
    return np.dtype(dtype).itemsize


# --------------------------------------------------------------------------------------------
# GLA (pallas_kernels/gla): chunk states, per-chunk outputs and gradients, recurrent steps.


def _gla_state_scan(B, Tp, H, K, V, *, chunk, block_v, dtype) -> KernelCost:
    """`chunk_state.state_scan`, forward (chunk states) or reverse (their gradients): per chunk
    and `[BK, BV]` state tile the chunk's gates (the in-chunk cumsum and two totals), the
    weights `exp(G_last - G)` or `scale exp(G)` (2 per element; per V tile: 5 C K in all), the
    `[BK, C] x [C, BV]` update (2 C K V over the tiles) and the decayed state plus the update
    (2 K V). Reads x (k or q), y (v or do), g and the entering state; writes the chunk states (x's
    dtype) and the end state."""
    C, NT, NV = chunk, Tp // chunk, V // block_v
    isz = _isz(dtype)
    nbytes = (B * Tp * H * (K * isz + V * isz + 4 * K)  # x, y, g
              + 2 * B * H * K * V * 4  # entering and end state
              + B * H * NT * K * V * isz)  # chunk states
    return KernelCost(B * H * NT * (2 * C * K * V + NV * 5 * C * K + 2 * K * V), nbytes)


def gla_chunk_fwd(B, Tp, H, K, V, *, chunk, block_v_state, block_v, dtype):
    """`pallas_kernels.gla.chunk_fwd`: the chunk states, then every chunk's output.

    Output kernel, per chunk and V tile (NV = V / block_v programs per chunk): the scores
    `(q e^{G - r}) (k e^{r - G})^T` (2C^2K), the inter-chunk output `(q e^G) S` (2CK BV) and
    `A v` (2C^2 BV); elementwise the gates (cumsum, total, the chunk's total: 3 per element of
    `[C, K]`) and the scaled q, k (q e^G, G - r, q e^{G-r}, r - G, k e^{r-G}: 5), the causal mask
    (C^2), the sum and the scale of the output (2 per element of `[C, BV]`).
    """
    NT, NV = Tp // chunk, V // block_v
    C, isz = chunk, _isz(dtype)
    per_program = (2 * C * C * K + 2 * C * K * block_v + 2 * C * C * block_v
                   + 8 * C * K + C * C + 2 * C * block_v)
    out = KernelCost(
        B * H * NT * NV * per_program,
        B * Tp * H * (2 * K * isz + 4 * K + 2 * V * isz)  # q, k, g, v, o
        + B * H * NT * K * V * isz)  # chunk states
    return {
        "gla_chunk_fwd_states": _gla_state_scan(B, Tp, H, K, V, chunk=chunk,
                                                block_v=block_v_state, dtype=dtype),
        "gla_chunk_fwd_output": out,
    }


def gla_chunk_bwd(B, Tp, H, K, V, *, chunk, block_v_state, block_v, dtype):
    """`pallas_kernels.gla.chunk_bwd`: the state gradients (a reverse state scan), then every
    chunk's gradients.

    Gradient kernel, per chunk and V tile: matmuls A (2C^2K), `(k e^{G_last-G}) dS` (2CK BV),
    `A^T do` (2C^2 BV), `dA = do v^T` (2C^2 BV), the intra-chunk dq and dk (2 x 2C^2K), the
    inter-chunk dq and dk (2 x 2CK BV): `6C^2K + 4C^2 BV + 6CK BV`. Elementwise per element of
    `[C, K]`: the chunk total (1); pass 1: gates (3), scaled q, k (4), `k e^{G_last-G}` (1);
    pass 2: gates again (3), the scaled operands and results of the intra terms (6), the inter
    terms' scales and sums (5), `q dq - k dk` (3), `sum k dk_inter` (2), the reverse cumsum (5),
    the diagonal terms `dq + d k`, `dk + d q` (4): 37. Per `[C, C]`: two masks and two scales (4);
    per `[C, BV]`: `dv +` and `d = scale sum(do v)` (3); per state tile: `sum(S dS)` (2 K BV).
    Writes dq, dk (float32 partials when there are V tiles), dg (float32), dv.
    """
    NT, NV = Tp // chunk, V // block_v
    C, BV, isz = chunk, block_v, _isz(dtype)
    per_program = (6 * C * C * K + 4 * C * C * BV + 6 * C * K * BV
                   + 37 * C * K + 4 * C * C + 3 * C * BV + 2 * K * BV)
    kgrads = 3 * 4 * NV if NV > 1 else 2 * isz + 4  # dq, dk, dg per element of [Tp, K]
    grads = KernelCost(
        B * H * NT * NV * per_program,
        B * Tp * H * (2 * K * isz + 4 * K + 2 * V * isz)  # q, k, g, v, do
        + 2 * B * H * NT * K * V * isz  # chunk states and their gradients
        + B * Tp * H * (K * kgrads + V * isz))  # dq, dk, dg, dv
    return {
        "gla_chunk_bwd_state_grads": _gla_state_scan(B, Tp, H, K, V, chunk=chunk,
                                                     block_v=block_v_state, dtype=dtype),
        "gla_chunk_bwd_grads": grads,
    }


def gla_recurrent_fwd(B, T, H, K, V, *, block_v, dtype):
    """`pallas_kernels.gla.recurrent.recurrent_fwd`: per step and `[K, BV]` state tile, the
    decay, the outer product and the sum (3 per state element), the readout `sum_k q_k S_k`
    (2) and q's scale (K per tile)."""
    NV, isz = V // block_v, _isz(dtype)
    return {"gla_recurrent_fwd": KernelCost(
        B * H * T * (5 * K * V + NV * K),
        B * T * H * (2 * K * isz + 4 * K + 2 * V * isz) + 2 * B * H * K * V * 4)}


def gla_recurrent_bwd(B, T, H, K, V, *, block_v, dtype):
    """`pallas_kernels.gla.recurrent.recurrent_bwd`: the dq pass replays the forward (decay,
    `sum_v S do` and the state update: 5 per state element, the scale K per tile); the dk/dv
    pass walks backwards: `dk = sum_v dS v` (2), `dS += (scale q)^T do` (2), `dv = sum_k dS k`
    (2), the decay (1), and per tile `q dq - k dk` (4K), `scale sum(do v)` (2BV + 1), dq and dk
    with the token's own pair (4K) and the scaled q (K). dq, dk, dg: float32 partials per V
    tile."""
    NV, isz = V // block_v, _isz(dtype)
    partial = B * T * H * K * 4 * NV  # one float32 [B, T, H, K] per V tile
    state = B * H * K * V * 4
    dq = KernelCost(
        B * H * T * (5 * K * V + NV * K),
        B * T * H * (K * isz + 4 * K + 2 * V * isz) + state + partial)  # k, g, v, do, h0
    dkv = KernelCost(
        B * H * T * (7 * K * V + NV * (9 * K + 2 * block_v + 1)),
        B * T * H * (2 * K * isz + 4 * K + 3 * V * isz)  # q, k, g, v, do, dv
        + 4 * partial  # dq read; dq, dk, dg written
        + 3 * state)  # ht, dht, dh0
    return {"gla_recurrent_bwd_dq": dq, "gla_recurrent_bwd_dkv": dkv}


# --------------------------------------------------------------------------------------------
# Simple GLA / Lightning (pallas_kernels/simple_gla): one scalar decay per head and step.


def _simple_gates(C, gate_mode, exact):
    """Elementwise work of `common.chunk_gates` for one chunk."""
    if gate_mode == "g":
        if exact:  # float32: diff as a [C, C] x [C, C] IEEE matmul of 0/1 and gate matrices
            # cumsum, last; the two matrices, the dot, G_rev (select + sum); causal mask
            return 2 * C + 2 * C * C + 2 * C ** 3 + 2 * C * C + C * C
        return 3 * C + 2 * C * C  # cumsum, last, G_rev; diff, causal mask
    if gate_mode == "gamma":
        return 4 * C + 3 * C * C  # G, last, G_rev (2); diff (2), causal mask
    return C * C


def _gate_bytes(B, Tp, H, C, gate_mode):
    return 4 * (B * H * Tp if gate_mode == "g" else H * C if gate_mode == "gamma" else 0)


def simple_gla_chunk_fwd(B, Tp, H, K, V, *, chunk, block_v, dtype, gate_mode="g",
                         initial_state=True):
    """`pallas_kernels.simple_gla.chunk_fwd`: per chunk and V tile, `q k^T` (2C^2K), `A v`
    (2C^2 bv), `q S` (2CK bv) and `k^T (v e^{G_rev})` (2CK bv); elementwise the gates
    (`_simple_gates`), the decay mask and scale on the scores (2C^2), the inter-chunk output's
    scale and sum (2C bv + C), v's decay (C bv) and the state update (2K bv)."""
    C, NT, NV, bv = chunk, Tp // chunk, V // block_v, block_v
    isz = _isz(dtype)
    exact = np.dtype(dtype) == np.float32
    per_program = (2 * C * C * K + 2 * C * C * bv + 4 * C * K * bv
                   + _simple_gates(C, gate_mode, exact) + 2 * C * C + 3 * C * bv + C
                   + 2 * K * bv)
    states = B * H * K * V * 4 * (2 if initial_state else 1)
    return {"simple_gla_chunk_fwd": KernelCost(
        B * H * NT * NV * per_program,
        B * Tp * H * (2 * K + 2 * V) * isz + _gate_bytes(B, Tp, H, C, gate_mode) + states)}


def simple_gla_chunk_bwd(B, Tp, H, K, V, *, chunk, block_k_dq, block_k_dk, block_v_dv, dtype,
                         gate_mode="g", gate_grad=True, initial_state=True,
                         final_state_grad=True):
    """`pallas_kernels.simple_gla.chunk_bwd`: three sweeps over the chunks, one launch each.

    Per chunk: dq sweep (K tile bk): `dA = do v^T` (2C^2V), `do S^T` (2CV bk), `dA k` (2C^2 bk),
    the state update (2CV bk); dk sweep: the same shapes (`dA`, `v dS^T`, `dA^T q`, `q^T do`);
    dv sweep (V tile bv): `q k^T` (2C^2K), `A^T do` (2C^2 bv), `k dS` (2CK bv), `q^T do`
    (2CK bv). Each sweep recomputes the gates; elementwise: the scores' decay and scale (2C^2),
    the inter term's scale and sum (2C tile + C), the decayed operand of the state update (C x
    its width: v in dq, q in dk, do in dv) and the update (2 x state tile). With a gate gradient
    the dq sweep adds `q k^T` (2C^2 bk), the crossing sums (`M = (q k^T) dA`, `U M` 2C^3, masks
    and the row sums: 4C^2) and `sum(q dq_inter)` (2C bk), and writes the float32 states S_n and
    its two gate terms per K tile; the dk sweep adds `sum(k dk_inter)` (2C bk) and
    `sum(S_n dS_n)` (2 bk V), reading the states and writing its two gate terms.
    Reads: dq k, v, do (and q with a gate gradient), the initial state; dk q, v, do (and k), the
    final state's cotangent, writing d initial_state; dv q, k, do and that cotangent.
    """
    C, NT = chunk, Tp // chunk
    isz = _isz(dtype)
    exact = np.dtype(dtype) == np.float32
    gates = _simple_gates(C, gate_mode, exact)
    n = {"dq": K // block_k_dq, "dk": K // block_k_dk, "dv": V // block_v_dv}
    row_k, row_v = B * Tp * H * K * isz, B * Tp * H * V * isz  # one [B, Tp, H, K] / V array
    gate = _gate_bytes(B, Tp, H, C, gate_mode)
    state = B * H * K * V * 4
    states = B * H * NT * K * V * 4  # the float32 states S_n (gate gradient)

    def gate_terms(role):  # two float32 [tiles, B, H, Tp] per sweep
        return 2 * n[role] * B * H * Tp * 4 if gate_grad else 0

    bk = block_k_dq
    dq = (2 * C * C * V + 4 * C * V * bk + 2 * C * C * bk
          + gates + 2 * C * C + 2 * C * bk + C + C * V + 2 * bk * V)
    if gate_grad:
        dq += 2 * C * C * bk + 2 * C ** 3 + 4 * C * C + 2 * C * bk
    bk = block_k_dk
    dk = (2 * C * C * V + 4 * C * V * bk + 2 * C * C * bk
          + gates + 2 * C * C + 3 * C * bk + C + 2 * bk * V)
    if gate_grad:
        dk += 2 * C * bk + 2 * bk * V
    bv = block_v_dv
    dv = (2 * C * C * K + 2 * C * C * bv + 4 * C * K * bv
          + gates + 2 * C * C + 3 * C * bv + C + 2 * K * bv)
    dht = state if final_state_grad else 0
    nbytes = {
        "dq": (row_k + 2 * row_v + (row_k if gate_grad else 0) + gate
               + (state if initial_state else 0) + row_k
               + (states if gate_grad else 0) + gate_terms("dq")),
        "dk": (row_k + 2 * row_v + (row_k if gate_grad else 0) + gate + dht + row_k + state
               + (states if gate_grad else 0) + gate_terms("dk")),
        "dv": 2 * row_k + row_v + gate + dht + row_v,
    }
    return {f"simple_gla_chunk_bwd_{role}": KernelCost(B * H * NT * n[role] * work, nbytes[role])
            for role, work in (("dq", dq), ("dk", dk), ("dv", dv))}


def simple_gla_recurrent_fwd(B, T, H, K, V, *, block_v, dtype, gate_mode="g",
                             initial_state=True):
    """`pallas_kernels.simple_gla.recurrent`: per step and `[K, bv]` state tile the decay, the
    outer product and its sum (3 per state element), the readout (2) and its scale (bv)."""
    isz = _isz(dtype)
    states = B * H * K * V * 4 * (2 if initial_state else 1)
    gate = 4 * (B * H * T if gate_mode == "g" else H * 16 if gate_mode == "gamma" else 0)
    return {"simple_gla_recurrent_fwd": KernelCost(
        B * H * T * (5 * K * V + V), B * T * H * (2 * K + 2 * V) * isz + gate + states)}


# --------------------------------------------------------------------------------------------
# Mamba's selective scan (pallas_kernels/selective_scan): elementwise work only.


def _discretize(bias: bool, softplus: bool) -> int:
    return int(bias) + 4 * int(softplus)


def selective_scan_fwd(B, T, D, N, *, chunk, groups=1, dtype, has_D=True, has_z=True,
                       bias=True, softplus=True, initial_state=False, save=False,
                       checkpoint=8):
    """`pallas_kernels.selective_scan.fwd.forward`, time cut into chunks (NC = ceil(T / chunk)).

    Per step and state element (t, d, n): `dt A` (1), `B_t (dt u)` (1), the fused `a h + b` (2);
    the output pass adds the readout `sum_n C_t h` (2). Per (t, d): the discretisation (bias 1,
    softplus 4), `dt u` (1); pass 1 sums dt (1); the output pass adds `D u` (2) and the z gate
    (sigmoid 3, two products). Pass 1 runs chunks 0 .. NC-2, the carry (3 per state element and
    chunk: `A S_k`, the fused update) walks NC-1 chunks, the output pass runs all T steps.
    """
    nc = -(-T // chunk)
    isz = _isz(dtype)
    disc = _discretize(bias, softplus)
    steps1 = min((nc - 1) * chunk, T)
    bc = B * T * groups * N * isz  # one of B, C
    seq = B * T * D * isz
    state = B * N * D * 4
    out = {}
    if nc > 1:
        out["selective_scan_fwd_states"] = KernelCost(
            B * steps1 * D * (4 * N + disc + 2),
            2 * seq + N * D * 4 + bc + (D * 4 if bias else 0)  # u, delta, A, B, bias
            + B * (nc - 1) * (N + 1) * D * 4)  # end states, dt sums
        out["selective_scan_fwd_carry"] = KernelCost(
            3 * B * (nc - 1) * N * D,
            N * D * 4 + (state if initial_state else 0)  # A, h0
            + B * (nc - 1) * (N + 1) * D * 4  # end states, dt sums
            + B * nc * N * D * 4)  # the state entering every chunk
    per_td = disc + 1 + 2 * int(has_D) + 5 * int(has_z)
    nbytes = (2 * seq + N * D * 4 + 2 * bc + (D * 4 if has_D else 0) + (seq if has_z else 0)
              + (D * 4 if bias else 0) + (B * nc * N * D * 4 if nc > 1 else
                                          state if initial_state else 0)
              + seq + state)  # y, final state
    if save:
        nbytes += B * (-(-T // checkpoint)) * N * D * 4
    out["selective_scan_fwd"] = KernelCost(B * T * D * (6 * N + per_td), nbytes)
    return out


def selective_scan_bwd(B, T, D, N, *, chunk, checkpoint=8, sub=4, groups=1, dtype, has_D=True,
                       has_z=True, bias=True, softplus=True, initial_state=False,
                       butterfly=True, n_blocks):
    """`pallas_kernels.selective_scan.bwd.backward`, chunks of `chunk` steps.

    Pass 1 (chunks 1 .. NC-1, reverse): per (t, d, n) `dt A` (1), the fused `C g + dh` (2) and
    the decay (1); per (t, d) the discretisation, z's gate (sigmoid 3, 2 products) and dt's sum.
    Pass 2, per chunk: the carry from the later chunks (3 per state element and chunk walked),
    then per step the states recomputed from the checkpoint (every step once, and on average
    (checkpoint / sub - 1) / 2 more: the sub-chunks that start between checkpoints advance to
    their start; 4 per element each, with the discretisation and `dt u` per (t, d)), and the
    reverse step: per (t, d, n) the readout for dz (2), `dh += C g` (2), `sum dh B` (2),
    `A dt` (1), `a dh` (1), `dh a h_{t-1}` (1, or 3 from the identity at a sub-chunk's first
    step), dA (2), `sum q A` (2), dB and dC (4); per (t, d) the z gate and dz (11), du (1, +4
    with D and dD), `dt u` (1), ddt (3, x sigmoid 4 with softplus) and d delta_bias (1).
    """
    nc = -(-T // chunk)
    isz = _isz(dtype)
    disc = _discretize(bias, softplus)
    seq = B * T * D * isz
    bc = B * T * groups * N * isz
    state = B * N * D * 4
    out = {}
    if nc > 1:
        steps = T - chunk
        out["selective_scan_bwd_states"] = KernelCost(
            B * steps * D * (4 * N + disc + 5 * int(has_z) + 1),
            seq * (2 + int(has_z)) + N * D * 4 + bc + (D * 4 if bias else 0)
            + B * (nc - 1) * (N + 1) * D * 4)
    per_chunk = checkpoint // sub
    advances = 1 + (per_chunk - 1) / 2
    per_tdn = 4 * advances + 2 * int(has_z) + 14 + (sub + 2) / sub
    per_td = (advances * (disc + 1) + 11 * int(has_z) + 1 + 4 * int(has_D)
              + 2 * int(has_z and has_D) + 1 + 3 + 4 * int(softplus) + int(bias))
    flops = B * T * D * (N * per_tdn + per_td) + 3 * B * D * N * nc * (nc - 1) // 2
    ns = -(-T // checkpoint)
    reads = (2 * seq + N * D * 4 + 2 * bc + (D * 4 if has_D else 0) + (seq if has_z else 0)
             + (D * 4 if bias else 0) + B * ns * N * D * 4 + seq + state  # states, dout, dlast
             + (B * (nc - 1) * (N + 1) * D * 4 if nc > 1 else 0))
    parts = B * n_blocks * T * (32 if butterfly else 2 * N) * 4
    writes = ((2 + int(has_z)) * seq + parts + B * nc * N * D * 4
              + B * nc * D * 4 * (int(has_D) + int(bias)) + (state if initial_state else 0))
    out["selective_scan_bwd"] = KernelCost(int(round(flops)), reads + writes)
    return out
