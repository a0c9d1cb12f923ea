"""How fast and how well a run trains: throughput, MFU, the JSONL log, progress, the plot.

* Throughput: a step's time is the wall time between the host seeing two consecutive steps
  finish (metrics are fetched one step behind, so the device always has the next step queued).
  Intervals that contain an evaluation or a checkpoint are left out, and so are the first
  `timing_warmup` steps.
* TFLOP/s = `jaxla.flops.training_flops_per_token(model, seq_len)` x tokens/s (model FLOPs:
  forward + backward, matmul + elementwise, no rematerialisation); MFU = that / (devices x
  `jaxla.flops.peak_flops(device_kind, dtype)`), n/a where the peak is unknown (CPU).
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import jax

GiB = 2**30


def device_kind() -> str:
    d = jax.devices()[0]
    return getattr(d, "device_kind", d.platform)


def peak_memory_bytes() -> int | None:
    """The largest `peak_bytes_in_use` over the local devices (None where unreported: CPU)."""
    peaks = []
    for d in jax.local_devices():
        try:
            stats = d.memory_stats()
        except Exception:  # noqa: BLE001 - some backends raise instead of returning None
            stats = None
        if stats and "peak_bytes_in_use" in stats:
            peaks.append(int(stats["peak_bytes_in_use"]))
    return max(peaks) if peaks else None


class Throughput:
    """Step times from completion timestamps; `pause()` marks an interval not to count."""

    def __init__(self, tokens_per_step: int, flops_per_token: float, peak_flops: float | None,
                 num_devices: int, warmup_steps: int):
        self.tokens_per_step = tokens_per_step
        self.flops_per_token = flops_per_token
        self.peak = peak_flops
        self.num_devices = num_devices
        self.warmup_steps = warmup_steps
        self._last: float | None = None
        self.times: list[tuple[int, float]] = []  # (step, seconds) of counted steps

    def pause(self):
        """The next interval starts now (call after an eval, a save or any host-side stall)."""
        self._last = time.perf_counter()

    def step_done(self, step: int, first_step: int):
        now = time.perf_counter()
        if self._last is not None and step - first_step >= self.warmup_steps:
            self.times.append((step, now - self._last))
        self._last = now

    def rates(self, window: int | None = None) -> dict:
        """tokens/s, step ms, TFLOP/s per device and MFU over the last `window` counted steps."""
        times = self.times[-window:] if window else self.times
        if not times:
            return {"tokens_per_s": None, "step_ms": None, "tflops_per_device": None,
                    "mfu": None, "timed_steps": 0}
        secs = sum(t for _, t in times)
        tps = self.tokens_per_step * len(times) / secs
        flops_per_device = self.flops_per_token * tps / self.num_devices
        return {"tokens_per_s": tps, "step_ms": 1e3 * secs / len(times),
                "tflops_per_device": flops_per_device / 1e12,
                "mfu": None if self.peak is None else flops_per_device / self.peak,
                "timed_steps": len(times)}


class JsonlLog:
    """Appends one JSON object per line to `<run_dir>/metrics.jsonl` (only on the process that
    is the `writer`; the others' writes do nothing)."""

    def __init__(self, path: Path, *, writer: bool = True):
        self.path = path
        self.writer = writer

    def truncate_after(self, step: int):
        """Drop the records past `step` (a resumed run redoes those steps)."""
        if not self.writer or not self.path.exists():
            return
        keep = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        self.path.write_text("".join(line + "\n" for line in keep))

    def write(self, record: dict):
        if not self.writer:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


def fmt(value, spec: str = ".3g", none: str = "n/a") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return none
    return format(value, spec)


def fmt_rate(r: dict) -> str:
    mfu = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
    return (f"{fmt(r['tokens_per_s'], ',.0f')} tok/s, {fmt(r['step_ms'], '.1f')} ms/step, "
            f"{fmt(r['tflops_per_device'], '.3g')} TFLOP/s/device, MFU {mfu}")


class Progress:
    """A tqdm bar (mode "bar") or plain log lines ("lines") or nothing ("off")."""

    def __init__(self, mode: str, total: int, initial: int):
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "lines"
        self.mode = mode
        self.bar = None
        if mode == "bar":
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True,
                            file=sys.stderr)

    def update(self, step: int, postfix: dict, *, line: bool):
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(postfix, refresh=False)
        elif self.mode == "lines" and line:
            print(f"step {step}: " + ", ".join(f"{k} {v}" for k, v in postfix.items()),
                  flush=True)

    def write(self, text: str):
        if self.bar is not None:
            self.bar.write(text)
        elif self.mode != "off":
            print(text, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def plot_curves(records: list[dict], path: Path, *, entropy: float | None = None,
                title: str = "") -> Path | None:
    """Train and validation loss (and validation accuracy, when logged) against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r.get("loss_avg", r["loss"])) for r in records
             if r.get("event") == "train" and math.isfinite(r.get("loss_avg", r["loss"]))]
    val = [(r["step"], r["val_loss"]) for r in records if r.get("event") == "eval"]
    acc = [(r["step"], r["val_accuracy"]) for r in records
           if r.get("event") == "eval" and r.get("val_accuracy") is not None]
    if not train and not val:
        return None
    ncols = 2 if acc else 1
    fig, axes = plt.subplots(1, ncols, figsize=(6.5 * ncols, 4.2), squeeze=False)
    ax = axes[0, 0]
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss (mean since the previous point)",
                lw=1.2)
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="validation loss", lw=1.5, ms=4)
    if entropy is not None:
        ax.axhline(entropy, color="gray", ls="--", lw=1, label=f"unigram entropy {entropy:.3f}")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    if acc:
        ax = axes[0, 1]
        ax.plot(*zip(*acc, strict=True), "o-", color="C2", ms=4)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("step")
        ax.set_ylabel("validation accuracy (query positions)")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
