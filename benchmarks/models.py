"""Forward + backward of the ~340M presets on one GPU: step time, tokens/s, peak memory.

    PYTHONPATH=. python3 -m benchmarks.models                 # the five presets, B=8, T=2048
    PYTHONPATH=. python3 -m benchmarks.models --presets gla_340m --iters 20
    PYTHONPATH=. python3 -m benchmarks.models --presets tiny_gla --batch 2 --seq 128   # CPU smoke

For each preset: bf16 compute, float32 parameters; one jitted function returns the mean
next-token cross-entropy on random tokens and its gradients w.r.t. all parameters (no optimizer
update, no donation). It is compiled ahead of time once (compile seconds and XLA's memory
analysis reported), run `--warmup` times, then timed as the median of `--iters` calls
(`benchmarks.timing.time_jax`). Peak memory: XLA's compiled memory analysis (arguments + outputs +
temporaries, the `jax_peak_bytes` formula on the already compiled program, so a 340M model is not
compiled twice) and the device's `peak_bytes_in_use` after the preset ran (a running maximum over
the process, so it is the preset's own peak only where it exceeds the earlier rows').

`--remat auto` (default): when the compiled program would not fit the device (memory analysis vs
`bytes_limit`) or running it fails with an out-of-memory error, the preset is rebuilt with
per-block rematerialisation and tried once more. Each preset is guarded: failures are recorded and
the run goes on. Presets that would start after `--budget-s` seconds are skipped (recorded), so
the command ends inside a 10-minute limit. With OUT set, `$OUT/models.json`, `$OUT/models.md`
(the table) and `$OUT/models.log` are written after every preset.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import math
import os
import platform
import sys
import time
import traceback
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from benchmarks.timing import time_jax
from jaxla.models import CausalLM, LMConfig

PRESETS = ("gla_340m", "lightning_340m", "mamba_370m", "transformer_340m", "minimax_hybrid_340m")
GiB = 2**30


class Log:
    """Print to stdout and, when OUT is set, append to $OUT/models.log."""

    def __init__(self, out: Path | None):
        self.path = None if out is None else out / "models.log"

    def __call__(self, *parts):
        line = " ".join(str(p) for p in parts)
        print(line, flush=True)
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(line + "\n")


def _device_kind() -> str:
    d = jax.devices()[0]
    return getattr(d, "device_kind", str(d))


def _memory_stats() -> dict:
    try:
        return jax.devices()[0].memory_stats() or {}
    except Exception:  # noqa: BLE001 - CPU devices may have none
        return {}


def _peak_bytes(compiled) -> int | None:
    """`benchmarks.timing.jax_peak_bytes`'s formula on an already compiled program."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001
        return None
    if m is None:
        return None
    total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
    return int(total - getattr(m, "alias_size_in_bytes", 0))


def _op_paths() -> dict:
    """Which implementation each op takes by default here (pallas once a kernel is listed)."""
    from jaxla.ops._checks import resolve_implementation

    paths = {}
    for name, module, attr in (("gla", "gla", "_CHUNK_IMPLEMENTATIONS"),
                               ("lightning", "simple_gla", "_CHUNK_IMPLEMENTATIONS"),
                               ("selective_scan", "selective_scan", "_IMPLEMENTATIONS")):
        try:
            available = getattr(importlib.import_module(f"jaxla.ops.{module}"), attr)
            paths[name] = resolve_implementation(None, available, module)
        except Exception as exc:  # noqa: BLE001 - informational only
            paths[name] = f"unknown ({type(exc).__name__})"
    paths["attention"] = "cudnn" if jax.default_backend() == "gpu" else "xla"
    return paths


def _flops_per_token(config: LMConfig, seq_len: int, num_params: int) -> tuple[float, str]:
    """jaxla.flops' exact training count when it exists, else 6N."""
    try:
        from jaxla.flops import training_flops_per_token

        return float(training_flops_per_token(config, seq_len)), "jaxla.flops"
    except Exception:  # noqa: BLE001 - the FLOP module may not be merged yet
        return 6.0 * num_params, "6N"


def _loss_and_grad_fn(graphdef):
    def loss_fn(params, ids):
        logits = nnx.merge(graphdef, params)(ids)
        return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], ids[:, 1:]).mean()

    return jax.jit(jax.value_and_grad(loss_fn))


def _compile(preset, args, remat):
    overrides = dict(dtype="bfloat16", param_dtype="float32", remat=remat)
    if args.implementation is not None:
        overrides["implementation"] = args.implementation
    config = LMConfig.preset(preset, **overrides)
    model = CausalLM(config, rngs=nnx.Rngs(0))
    num_params = model.num_params()
    graphdef, params = nnx.split(model)
    del model
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(0, config.vocab_size, (args.batch, args.seq)), jnp.int32)
    start = time.perf_counter()
    compiled = _loss_and_grad_fn(graphdef).lower(params, ids).compile()
    return config, num_params, params, ids, compiled, time.perf_counter() - start


def _is_oom(exc: BaseException) -> bool:
    text = f"{type(exc).__name__} {exc}".lower()
    return any(s in text for s in ("resource_exhausted", "out of memory", "oom", "would not fit"))


def run_preset(preset: str, args, log: Log) -> dict:
    row = {"preset": preset, "batch": args.batch, "seq": args.seq}
    attempts = [False, True] if args.remat == "auto" else [args.remat == "on"]
    limit = _memory_stats().get("bytes_limit")
    for i, remat in enumerate(attempts):
        row.update(remat=remat, error=None)
        try:
            config, n, params, ids, compiled, compile_s = _compile(preset, args, remat)
            peak = _peak_bytes(compiled)
            row.update(params=n, compile_s=round(compile_s, 1),
                       xla_peak_gib=None if peak is None else round(peak / GiB, 2),
                       mixers="+".join(sorted(set(config.mixers))))
            log(f"[{preset}] remat={remat} params={n / 1e6:.1f}M compiled in {compile_s:.1f}s, "
                f"XLA memory analysis {row['xla_peak_gib']} GiB (device limit "
                f"{None if limit is None else round(limit / GiB, 1)} GiB)")
            if limit is not None and peak is not None and peak > limit:
                raise MemoryError(f"compiled program needs {peak / GiB:.1f} GiB, would not fit "
                                  f"in {limit / GiB:.1f} GiB")
            loss, _ = compiled(params, ids)
            loss = float(loss)
            if not math.isfinite(loss):
                raise FloatingPointError(f"loss is {loss}")
            ms = time_jax(compiled, params, ids, warmup=args.warmup, iters=args.iters)
            tokens = args.batch * args.seq
            flops, flops_rule = _flops_per_token(config, args.seq, n)
            stats = _memory_stats()
            row.update(
                loss=round(loss, 4), step_ms=round(ms, 2), tokens_per_s=round(tokens / (ms / 1e3)),
                tflops=round(flops * tokens / (ms / 1e3) / 1e12, 1), flops_rule=flops_rule,
                device_peak_gib=(round(stats["peak_bytes_in_use"] / GiB, 2)
                                 if "peak_bytes_in_use" in stats else None),
            )
            log(f"[{preset}] loss {loss:.3f} (ln V = {math.log(config.vocab_size):.3f}), "
                f"{ms:.1f} ms/step, {row['tokens_per_s']} tokens/s, device peak so far "
                f"{row['device_peak_gib']} GiB")
            return row
        except Exception as exc:  # noqa: BLE001 - guard every preset, keep going
            row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
            log(f"[{preset}] remat={remat} failed: {row['error']}")
            if args.verbose:
                log(traceback.format_exc())
            retry = i + 1 < len(attempts) and _is_oom(exc)
            if not retry:
                return row
            log(f"[{preset}] out of memory: retrying with per-block rematerialisation")
        finally:
            compiled = params = ids = None  # noqa: F841 - free device memory before the next try
            gc.collect()
    return row


COLUMNS = (("preset", "preset"), ("params", "params M"), ("remat", "remat"),
           ("step_ms", "fwd+bwd ms"), ("tokens_per_s", "tokens/s"), ("tflops", "TFLOP/s"),
           ("xla_peak_gib", "XLA peak GiB"), ("device_peak_gib", "device peak GiB"),
           ("compile_s", "compile s"), ("error", "error"))


def table(rows) -> str:
    align = [" --- " if k in ("preset", "error") else " ---: " for k, _ in COLUMNS]
    lines = ["| " + " | ".join(h for _, h in COLUMNS) + " |", "|" + "|".join(align) + "|"]
    for r in rows:
        cells = []
        for key, _ in COLUMNS:
            v = r.get(key)
            if key == "params" and v is not None:
                v = f"{v / 1e6:.1f}"
            cells.append("" if v is None else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=list(PRESETS))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--remat", choices=("auto", "on", "off"), default="auto")
    parser.add_argument("--implementation", choices=("pallas", "xla", "naive"), default=None,
                        help="force the ops' implementation (default: pallas on GPU "
                             "where it exists)")
    parser.add_argument("--budget-s", type=float, default=540.0,
                        help="skip presets that would start after this many seconds")
    parser.add_argument("--verbose", action="store_true", help="log tracebacks of failures")
    args = parser.parse_args(argv)

    out = Path(os.environ["OUT"]) if os.environ.get("OUT") else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    log = Log(out)
    meta = {"device": _device_kind(), "backend": jax.default_backend(), "jax": jax.__version__,
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M"),
            "argv": sys.argv, "op_paths": _op_paths()}
    log(f"models benchmark on {meta['device']} ({meta['backend']}), jax {meta['jax']}, "
        f"B={args.batch} T={args.seq}, default op paths {meta['op_paths']}")

    start, rows = time.perf_counter(), []
    for preset in args.presets:
        elapsed = time.perf_counter() - start
        if elapsed > args.budget_s:
            reason = f"skipped: {elapsed:.0f}s > budget {args.budget_s:.0f}s"
            rows.append({"preset": preset, "error": reason})
            log(f"[{preset}] skipped (time budget)")
        else:
            rows.append(run_preset(preset, args, log))
        meta["memory_stats_after"] = {k: v for k, v in _memory_stats().items()
                                      if k in ("peak_bytes_in_use", "bytes_limit", "bytes_in_use")}
        if out is not None:
            (out / "models.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
            (out / "models.md").write_text(table(rows) + "\n")

    stats = meta["memory_stats_after"]
    if "peak_bytes_in_use" in stats:
        log(f"device peak_bytes_in_use after all presets: "
            f"{stats['peak_bytes_in_use'] / GiB:.2f} GiB")
    log(f"\nforward+backward, bf16 compute / fp32 params, B={args.batch}, T={args.seq}, "
        f"{meta['device']}, jax {meta['jax']} (total {time.perf_counter() - start:.0f}s)")
    log(table(rows))


if __name__ == "__main__":
    main()
