"""Tensor name maps between a Hugging Face checkpoint and a jaxla `CausalLM`, both ways.

A map is a list of `Entry(hf, jaxla, kind)`: one Hugging Face tensor and the jaxla
parameter(s) it becomes. `kind` says how the numbers move (PyTorch layouts on the left):

* "same": identical arrays (embeddings, norm scales, biases, Mamba's A_log and D).
* "linear": `nn.Linear.weight [out, in]` <-> kernel `[in, out]` (a transpose).
* "conv": depthwise `nn.Conv1d.weight [C, 1, W]` <-> `ShortConvolution.weight [W, C]`.
* "expert": one expert's `nn.Linear.weight [out, in]` <-> slice `index` of a stacked jaxla
  kernel `[E, in, out]` (Mixtral's `experts.<e>.w1/w3/w2` <-> `gate_proj/up_proj/down_proj`).
* "ones": no Hugging Face tensor (a norm without a learnable scale); the jaxla parameter is
  all ones on import, and export requires it to be.

Import and export run the same list, so an export followed by an import is exact.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

KINDS = ("same", "linear", "conv", "expert", "ones")


class Entry(NamedTuple):
    hf: str | None
    jaxla: str
    kind: str
    index: int | None = None  # "expert": which slice of the stacked jaxla kernel


def entry(hf: str | None, jaxla: str, kind: str, index: int | None = None) -> Entry:
    assert kind in KINDS, kind
    return Entry(hf, jaxla, kind, index)


def check_names(entries: list[Entry], tensors: dict, *, source: str, ignore=()) -> None:
    """One ValueError naming every missing and every unexpected tensor of `tensors`."""
    want = {e.hf for e in entries if e.hf is not None}
    got = set(tensors) - set(ignore)
    missing, extra = sorted(want - got), sorted(got - want)
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensor(s): {', '.join(missing[:8])}"
                         + (" ..." if len(missing) > 8 else ""))
        if extra:
            parts.append(f"unexpected {len(extra)} tensor(s): {', '.join(extra[:8])}"
                         + (" ..." if len(extra) > 8 else ""))
        raise ValueError(f"{source}: {'; '.join(parts)}")


def to_jaxla(entries: list[Entry], tensors: dict[str, np.ndarray],
             shapes: dict[str, tuple]) -> dict[str, np.ndarray]:
    """jaxla parameters `{dotted path: array}` from Hugging Face tensors (names checked first).
    `shapes` gives the shape of every jaxla parameter (for "ones" and "expert")."""
    out = {}
    for e in entries:
        t = None if e.hf is None else np.asarray(tensors[e.hf])
        if e.kind == "same":
            out[e.jaxla] = t
        elif e.kind == "linear":
            _rank(e, t, 2)
            out[e.jaxla] = t.T
        elif e.kind == "conv":
            _rank(e, t, 3)
            if t.shape[1] != 1:
                raise ValueError(f"{e.hf}: a depthwise conv weight must be [C, 1, W], "
                                 f"got {t.shape}")
            out[e.jaxla] = t[:, 0, :].T
        elif e.kind == "expert":
            _rank(e, t, 2)
            stacked = out.setdefault(e.jaxla, np.zeros(shapes[e.jaxla], t.dtype))
            if stacked.shape[1:] != t.T.shape:
                raise ValueError(f"tensor {e.hf} has shape {t.shape}, the config needs "
                                 f"{stacked.shape[1:][::-1]}")
            stacked[e.index] = t.T
        elif e.kind == "ones":
            out[e.jaxla] = np.ones(shapes[e.jaxla], np.float32)
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def to_hf(entries: list[Entry], params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Hugging Face tensors from jaxla parameters (the inverse of `to_jaxla`)."""
    out = {}
    for e in entries:
        p = np.asarray(params[e.jaxla])
        if e.kind == "same":
            out[e.hf] = p
        elif e.kind == "linear":
            out[e.hf] = p.T
        elif e.kind == "conv":
            out[e.hf] = p.T[:, None, :]
        elif e.kind == "expert":
            out[e.hf] = p[e.index].T
        elif e.kind == "ones":
            if not np.all(p == 1):
                raise ValueError(f"{e.jaxla} is not all ones, and the target format has no "
                                 f"tensor for it (elementwise_affine=False)")
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def _rank(e: Entry, t: np.ndarray, rank: int) -> None:
    if t.ndim != rank:
        raise ValueError(f"tensor {e.hf} must have rank {rank} ({e.kind}), got shape {t.shape}")
