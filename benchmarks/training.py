"""Training throughput of the ~340M presets beside their PyTorch anchors, in one run.

    PYTHONPATH=. python3 -m benchmarks.training          # gla_340m, mamba_370m, transformer_340m
    PYTHONPATH=. python3 -m benchmarks.training --presets gla_340m --anchors fla_gla_340m
    PYTHONPATH=. python3 -m benchmarks.training --presets tiny_gla --batch_size 2 --seq_len 128 \
        --steps 20 --warmup 5                            # CPU smoke

Each preset runs in its own process (so its peak memory is its own):
`python -m train --preset P --data random --batch_size 8 --seq_len 2048 --steps N --no-checkpoint
--timing_warmup W` (FLA's benchmark setting: B=8, T=2048, random tokens). A run that fails with an
out-of-memory error is retried once with `--remat`. Runs that would start after `--budget_s`
are skipped, and each gets at most the budget left, so the command ends inside a 10-minute limit.
`--anchors` names PyTorch models (`benchmarks.torch_training`) trained in the same call on the same
batch shape, each in its own process: their tokens/s and peak memory stand in the same table, and
each jaxla row carries its ratio to its own anchor when that ran (`torch_training.PRESET_OF`; no
number measured elsewhere is used). A preset trained beside its anchor takes the LMConfig fields
that make it the anchor's architecture (the MiniMax anchors': MiniMax's block wiring and a
one-expert MoE), named in its row. The table (tokens/s after the warm-up steps, step ms, TFLOP/s
per device, MFU from jaxla's FLOP formulas and from 6N, peak memory) is printed last and, with OUT
set, written to `$OUT/train_bench.md` with the logs and summaries beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.torch_training import PRESET_OF


def _is_oom(text: str) -> bool:
    low = text.lower()
    return any(s in low for s in ("resource_exhausted", "out of memory", "oom when"))


def gpu_memory_in_use() -> str | None:
    """nvidia-smi's used / total GPU memory and the processes holding it (None without it).

    Printed before each run: an out-of-memory error for a plan that fit before shows whether
    another process held the memory."""
    queries = (["--query-gpu=memory.used,memory.total"],
               ["--query-compute-apps=pid,process_name,used_memory"])
    try:
        used, apps = (subprocess.run(["nvidia-smi", *q, "--format=csv,noheader"], text=True,
                                     capture_output=True, timeout=20).stdout.strip()
                      for q in queries)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return f"{used or '?'} used; processes: {apps.replace(chr(10), '; ') or 'none'}"


def anchor_of(preset: str, anchors: list[str]) -> str | None:
    """The anchor among `anchors` that stands for `preset` (None when none does)."""
    return next((a for a in anchors if PRESET_OF[a][0] == preset), None)


def field_flags(fields: dict) -> list[str]:
    """`python -m train` options setting these LMConfig fields."""
    return [x for name, value in fields.items() for x in (f"--{name}", str(value))]


def run_preset(preset: str, args, remat: bool, timeout: float, out: Path | None,
               fields: dict | None = None) -> dict:
    fields = fields or {}
    run_dir = Path("runs") / f"bench-{preset}"
    cmd = [sys.executable, "-m", "train", "--preset", preset, "--data", "random",
           "--batch_size", str(args.batch_size), "--seq_len", str(args.seq_len),
           "--steps", str(args.steps), "--no-checkpoint", "--timing_warmup", str(args.warmup),
           "--eval_every", str(10 * args.steps), "--eval_batches", "2", "--progress", "lines",
           "--log_every", str(max(1, args.steps // 6)), "--run_dir", str(run_dir),
           "--overwrite", "--no-plot"]
    cmd += (["--remat"] if remat else []) + field_flags(fields) + args.extra
    print("$ " + " ".join(cmd), flush=True)
    memory = gpu_memory_in_use()
    if memory is not None:
        print(f"GPU memory before the run: {memory}", flush=True)
    summary_path = run_dir / "summary.json"
    summary_path.unlink(missing_ok=True)  # so that only this run's summary is read below
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "OUT": ""})
        text, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        text = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        text += f"\n[timed out after {timeout:.0f} s]"
        rc = -1
    wall = time.perf_counter() - start
    tail = "\n".join(text.splitlines()[-25:])
    print(tail, flush=True)
    if out is not None:
        (out / f"train_{preset}{'_remat' if remat else ''}.log").write_text(text)
    row = {"preset": preset, "remat": remat or "--remat" in args.extra, "rc": rc, "wall_s": wall,
           "oom": _is_oom(text), "gpu_memory_before": memory, "fields": fields}
    # A run stopped by the timeout after it wrote its summary (while exiting) still measured.
    if summary_path.exists():
        row.update(json.loads(summary_path.read_text()))
        if rc != 0:
            print(f"{preset}: exited with rc {rc} after writing its summary; its numbers are kept",
                  flush=True)
        if out is not None:
            (out / f"train_{preset}_summary.json").write_text(summary_path.read_text())
    return row


def _fmt(v, spec, suffix=""):
    return "n/a" if v is None else format(v, spec) + suffix


def run_anchor(name: str, args, timeout: float, out: Path | None) -> dict:
    """A PyTorch anchor (`benchmarks.torch_training`) on the same batch shape, its own process."""
    cmd = [sys.executable, "-m", "benchmarks.torch_training", "--model", name,
           "--batch_size", str(args.batch_size), "--seq_len", str(args.seq_len),
           "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--profile", str(args.anchor_profile)]
    print("$ " + " ".join(cmd), flush=True)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        text, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        text = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        text, rc = text + f"\n[timed out after {timeout:.0f} s]", -1
    print("\n".join(text.splitlines()[-15:]), flush=True)
    if out is not None:
        (out / f"anchor_{name}.log").write_text(text)
    row = {"preset": f"{name} (PyTorch)", "remat": False, "rc": rc, "anchor": name,
           "oom": _is_oom(text)}
    for key in ("RESULT ", "PROFILE "):
        found = [line for line in text.splitlines() if line.startswith(key)]
        if rc == 0 and found:
            row.update(json.loads(found[-1][len(key):]))
    return row


def launch_notes(rows: list[dict]) -> list[str]:
    """One line per anchor whose GPU time was traced: its kernels' time against its step time
    (an eager PyTorch step can leave the GPU idle while the host launches kernels, so its
    tokens/s depends on the machine's CPU too)."""
    return [f"{r['preset']}: {r['device_ms_per_step']:.1f} ms of GPU time per step in "
            f"{r['step_ms']:.1f}-ms steps (GPU busy "
            f"{100 * r['device_ms_per_step'] / r['step_ms']:.0f} %)"
            for r in rows if r.get("anchor") and r.get("device_ms_per_step") and r.get("step_ms")]


def _versus(row: dict, rows: list[dict]) -> str:
    """A jaxla row's tokens/s over its own anchor's, when that ran in this call."""
    anchor = next((r for r in rows if row.get("versus") and r.get("anchor") == row["versus"]
                   and r.get("tokens_per_s")), None)
    if anchor is None:
        return "n/a"
    return f"{row['tokens_per_s'] / anchor['tokens_per_s']:.2f}x {anchor['anchor']}"


def table(rows: list[dict]) -> str:
    head = ("| preset | remat | params | tokens/s | step ms | TFLOP/s/dev | MFU | MFU (6N) | "
            "peak GiB | compile s | vs its anchor, same run |")
    lines = [head, "| " + " | ".join(["---"] * (head.count("|") - 1)) + " |"]
    for r in rows:
        if r.get("anchor") and r.get("tokens_per_s") is not None:
            lines.append(f"| {r['preset']} | | {r['params'] / 1e6:.1f}M | "
                         f"{r['tokens_per_s']:,.0f} | {r['step_ms']:.1f} | | | | "
                         f"{r['peak_memory_bytes'] / 2**30:.2f} | | 1.00x |")
            continue
        if r.get("tokens_per_s") is None:
            why = "out of memory" if r.get("oom") else f"failed (rc {r.get('rc')})"
            if r.get("skipped"):
                why = "skipped (time budget)"
            lines.append(f"| {r['preset']} | {r.get('remat', '')} | {why} |" + " |" * 8)
            continue
        peak = r.get("peak_memory_bytes")
        name = r["preset"] + "".join(f" {k}={v}" for k, v in (r.get("fields") or {}).items())
        lines.append(
            f"| {name} | {r['remat']} | {r['params'] / 1e6:.1f}M | "
            f"{r['tokens_per_s']:,.0f} | {r['step_ms']:.1f} | "
            f"{_fmt(r['tflops_per_device'], '.3g')} | "
            f"{_fmt(None if r['mfu'] is None else 100 * r['mfu'], '.1f', '%')} | "
            f"{_fmt(None if r['mfu_6n'] is None else 100 * r['mfu_6n'], '.1f', '%')} | "
            f"{_fmt(None if peak is None else peak / 2**30, '.2f')} | {r['compile_s']:.0f} | "
            f"{_versus(r, rows)} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.training", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="gla_340m,mamba_370m,transformer_340m")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--seq_len", type=int, default=2048)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--warmup", type=int, default=20, help="steps left out of the timing")
    p.add_argument("--budget_s", type=float, default=560.0)
    p.add_argument("--anchors", default="", help="PyTorch anchors to train in the same run, "
                   f"comma separated (benchmarks.torch_training: {', '.join(PRESET_OF)})")
    p.add_argument("--anchor_profile", type=int, default=3, metavar="N",
                   help="trace N more steps of each anchor for its GPU time per step (0: none)")
    p.add_argument("extra", nargs="*", help="more `python -m train` options (after --)")
    args = p.parse_args(argv)
    if not 0 <= args.warmup < args.steps:
        p.error(f"--warmup must be in [0, --steps) so that some steps are timed, got "
                f"--warmup {args.warmup}, --steps {args.steps}")
    if args.anchor_profile < 0:
        p.error(f"--anchor_profile must be >= 0, got {args.anchor_profile}")
    out = Path(os.environ["OUT"]) if os.environ.get("OUT") else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rows = []
    anchors = [s for s in args.anchors.split(",") if s]
    unknown = [a for a in anchors if a not in PRESET_OF]
    if unknown:
        p.error(f"--anchors: unknown {', '.join(unknown)} (known: {', '.join(PRESET_OF)})")
    for name in anchors:
        left = args.budget_s - (time.perf_counter() - start)
        rows.append(run_anchor(name, args, left, out) if left >= 30
                    else {"preset": f"{name} (PyTorch)", "anchor": name, "skipped": True})
    for preset in [s for s in args.presets.split(",") if s]:
        for remat in (False, True):
            left = args.budget_s - (time.perf_counter() - start)
            if left < 30:
                rows.append({"preset": preset, "remat": remat, "skipped": True})
                break
            anchor = anchor_of(preset, anchors)
            fields = PRESET_OF[anchor][1] if anchor else {}
            row = run_preset(preset, args, remat, left, out, fields) | {"versus": anchor}
            rows.append(row)
            if not row["oom"] or remat:
                break
    text = "\n".join([table(rows), *launch_notes(rows)])
    note = (f"B={args.batch_size}, T={args.seq_len}, {args.steps} steps, random tokens, tokens/s "
            f"after {args.warmup} warm-up steps; anchors trained in this run: "
            f"{args.anchors or 'none'}.")
    if out is not None:
        (out / "train_bench.md").write_text(note + "\n\n" + text + "\n")
        (out / "train_bench.json").write_text(json.dumps(rows, indent=2, default=str) + "\n")
    print("\n" + note)
    print(text)
    return 0 if all(r.get("tokens_per_s") is not None for r in rows
                    if not r.get("oom") and not r.get("anchor")) else 1


if __name__ == "__main__":
    sys.exit(main())
