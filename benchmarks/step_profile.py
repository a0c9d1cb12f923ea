"""Where a training step's device time goes: `python -m train` traced with `jax.profiler`.

    PYTHONPATH=. python3 -m benchmarks.step_profile -- --preset gla_340m --data random \
        --batch_size 8 --seq_len 2048                   # on the GPU
    PYTHONPATH=. python3 -m benchmarks.step_profile --warmup 2 --steps 2 -- --batch_size 2 \
        --seq_len 64                                    # CPU smoke (the default model)

Runs `python -m train TRAIN_ARGS` in this process for `--warmup` + `--steps` steps (no
checkpoints, one evaluation at the end) and traces exactly the `--steps` steps after the warm-up:
the trace starts once step `--warmup` has finished (compiles and autotuning are done) and stops
once the last traced step has, before the evaluation. Every device event of the trace (GPU: the
kernels and copies on the streams; CPU: XLA's thunks) is summed by name and divided by `--steps`;
the table gives milliseconds per step by kind (matmuls, jaxla's Pallas kernels, device copies and
memsets, everything else), the `--top` kernels, and the copies by the HLO op that made them. On a
GPU the device time per step against the step's wall time shows whether the GPU ever waits.
`--json PATH` writes the numbers. The PyTorch anchors' counterpart is
`python -m benchmarks.torch_training --model M --profile N`.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.profiler as jp

# jaxla's Pallas kernels are named after their op (`pallas_call(..., name=...)`).
PALLAS_PREFIXES = ("gla_", "simple_gla_", "selective_scan_")
KINDS = ("matmuls", "Pallas kernels", "copies and memsets", "other")


def is_copy(name: str) -> bool:
    """A device copy: CUDA's ("MemcpyD2D") or XLA's own copy kernels ("memcpy128",
    "memcpy32_post": what a dynamic slice or update becomes inside a loop)."""
    return name.lower().startswith("memcpy")


def kind_of(name: str) -> str:
    """The kind of a device event, from its name."""
    low = name.lower()
    if is_copy(name) or low.startswith("memset"):
        return "copies and memsets"
    if name.startswith(PALLAS_PREFIXES):
        return "Pallas kernels"
    if ("gemm" in low or "cublas" in low or low.startswith(("nvjet", "cutlass", "sm90_xmma"))
            or low.startswith("dot")):
        return "matmuls"
    return "other"


def device_events(planes: list, gpu: bool):
    """The events of the traced device work: the GPU's streams (`gpu`), else the CPU client's
    XLA threads."""
    for plane in planes:
        if plane.name.startswith("/device:GPU") if gpu else plane.name == "/host:CPU":
            for line in plane.lines:
                if line.name.startswith("Stream") if gpu else "PjRtCpuClient" in line.name:
                    yield from line.events


def summarize(xspace: jp.ProfileData, steps: int) -> dict:
    """Milliseconds per step by kind, by event name (with calls per step) and, for copies, by the
    HLO op behind them."""
    planes = list(xspace.planes)
    gpu = any(p.name.startswith("/device:GPU") for p in planes)
    ns, calls = collections.Counter(), collections.Counter()
    copies = collections.defaultdict(lambda: [0, 0, 0])  # (name, hlo op) -> [ns, calls, bytes]
    for e in device_events(planes, gpu):
        if e.name.startswith("ThunkExecutor::"):  # (CPU) wraps the thunks it runs
            continue
        ns[e.name] += e.duration_ns
        calls[e.name] += 1
        if is_copy(e.name):
            stats = {str(k): str(v) for k, v in e.stats}
            # CUPTI's details: "kind_src:device kind_dst:device size:N dest:0 async:1".
            nbytes = re.search(r"(?:^|\s)size:(\d+)", stats.get("memcpy_details", ""))
            op = stats.get("hlo_op") or stats.get("tf_op") or "?"
            entry = copies[(e.name, op)]
            entry[0] += e.duration_ns
            entry[1] += 1
            entry[2] += int(nbytes.group(1)) if nbytes else 0
    by_kind = dict.fromkeys(KINDS, 0.0)
    for name, total in ns.items():
        by_kind[kind_of(name)] += total / 1e6 / steps
    return {
        "steps": steps,
        "gpu": gpu,
        "device_ms_per_step": sum(ns.values()) / 1e6 / steps,
        "by_kind_ms": by_kind,
        "by_name": [{"name": n, "kind": kind_of(n), "ms": t / 1e6 / steps,
                     "calls": calls[n] / steps} for n, t in ns.most_common()],
        "copies_by_op": [{"event": e, "hlo_op": op, "ms": t / 1e6 / steps, "calls": c / steps,
                          "mb_each": b / max(c, 1) / 1e6}
                         for (e, op), (t, c, b) in sorted(copies.items(), key=lambda kv: -kv[1][0])],
    }


def table(result: dict, top: int) -> str:
    per_step = result["device_ms_per_step"]
    where = ("GPU streams" if result["gpu"] else
             "CPU: XLA's thunks on the client thread only, not those its thread pool runs")
    lines = [f"device time per step {per_step:.2f} ms ({where}); traced steps took "
             f"{result['wall_ms_per_step']:.2f} ms each (wall)", "",
             "| kind | ms per step | share |", "| --- | ---: | ---: |"]
    for kind, ms in result["by_kind_ms"].items():
        lines.append(f"| {kind} | {ms:.2f} | {100 * ms / max(per_step, 1e-9):.1f} % |")
    lines += ["", "| event | kind | ms per step | calls per step |", "| --- | --- | ---: | ---: |"]
    lines += [f"| {r['name'][:90]} | {r['kind']} | {r['ms']:.3f} | {r['calls']:g} |"
              for r in result["by_name"][:top]]
    if result["copies_by_op"]:
        lines += ["", "| copy | HLO op | ms per step | calls per step | MB each |",
                  "| --- | --- | ---: | ---: | ---: |"]
        lines += [f"| {r['event']} | {r['hlo_op'][:80]} | {r['ms']:.3f} | {r['calls']:g} | "
                  f"{r['mb_each']:.2f} |" for r in result["copies_by_op"][:top]]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    own, train_args = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv \
        else (argv, [])
    p = argparse.ArgumentParser(prog="python -m benchmarks.step_profile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--warmup", type=int, default=3, help="steps before the trace")
    p.add_argument("--steps", type=int, default=5, help="traced steps")
    p.add_argument("--top", type=int, default=30, help="events listed")
    p.add_argument("--json", default=None, help="write the numbers to this file")
    args = p.parse_args(own)
    if args.warmup < 1 or args.steps < 1:
        p.error(f"--warmup and --steps must be >= 1, got {args.warmup}, {args.steps}")
    for option in ("--steps", "--run_dir", "--checkpoint", "--no-checkpoint"):
        if option in train_args:
            p.error(f"the train option {option} is set by this script")

    with tempfile.TemporaryDirectory(prefix="step_profile_") as tmp:
        result = _profile(p, args, train_args, Path(tmp))
    result["device"] = jax.devices()[0].device_kind
    result["train_args"] = train_args
    print(f"{result['device']}: python -m train {' '.join(train_args)}; {args.steps} steps traced "
          f"after {args.warmup}")
    print(table(result, args.top))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


def _profile(p, args, train_args, tmp: Path) -> dict:
    """Train `--warmup` + `--steps` steps in a run folder under `tmp`, tracing the steps after the
    warm-up into `tmp`: the summary and the traced steps' wall time."""
    from train.config import ConfigError, parse_args
    from train.loop import train

    last = args.warmup + args.steps
    run_dir, trace_dir = tmp / "run", tmp / "trace"
    try:
        config = parse_args(train_args + [
            "--steps", str(last), "--no-checkpoint", "--run_dir", str(run_dir), "--overwrite",
            "--eval_every", str(10 * last), "--eval_batches", "1", "--progress", "off",
            "--no-plot"])
    except ConfigError as exc:
        p.error(f"train options: {exc}")
    options = jp.ProfileOptions()
    options.python_tracer_level = 0
    # The GPU's kernels are device events; the CPU's thunks are host events.
    options.host_tracer_level = 0 if jax.default_backend() == "gpu" else 1
    started = []

    def on_step(step, metrics):
        if step == args.warmup:
            jax.block_until_ready(metrics)
            jp.start_trace(str(trace_dir), profiler_options=options)
            started.append(time.perf_counter())
        elif step == last:
            jax.block_until_ready(metrics)
            started.append(time.perf_counter())
            jp.stop_trace()
        return metrics

    try:
        train(config, echo=lambda *a, **k: None, on_step=on_step)
    except ConfigError as exc:
        p.error(f"train options: {exc}")
    (path,) = trace_dir.rglob("*.xplane.pb")
    result = summarize(jp.ProfileData.from_file(str(path)), args.steps)
    result["wall_ms_per_step"] = 1e3 * (started[1] - started[0]) / args.steps
    return result


if __name__ == "__main__":
    raise SystemExit(main())
