"""Multi-GPU training check: one GPU vs all GPUs of the host on the same global batch, then a
checkpoint of the n-GPU run resumed on one GPU.

    NCCL_NVLS_ENABLE=0 PYTHONPATH=. python3 -m benchmarks.gpu.multi_gpu --steps 200

1. `one`: `python -m train --preset gla_340m --data stdlib` on 1 GPU (no checkpoints).
2. `all`: the same run on a data x fsdp mesh over every GPU (default data=1 x fsdp=n), saving
   checkpoints at steps/2 and steps.
3. `resumed`: a copy of `all`'s run folder without its last checkpoint, resumed with
   `--resume` on a 1 x 1 mesh: it trains steps/2+1 .. steps from the n-GPU checkpoint.

Prints per-run tokens/s, tokens/s per GPU, scaling efficiency (tokens/s on n / (n x tokens/s on
one)) and the loss agreement (max and mean relative difference per step; `jaxla.testing`'s bf16
check on the whole loss curve), and writes `$OUT/multi_gpu.json` (`runs/multi_gpu_out/` when OUT
is unset).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import jax
import numpy as np

from jaxla.testing import rel_error, tolerance
from train import loop
from train.config import parse_args


def _run(args: list[str]) -> dict:
    t0 = time.perf_counter()
    result = loop.train(parse_args(args))
    print(f"[{time.perf_counter() - t0:.0f} s]", flush=True)
    return result


def _compare(a: dict, b: dict, steps: list[int]) -> dict:
    x = np.array([a[s] for s in steps], np.float64)
    y = np.array([b[s] for s in steps], np.float64)
    rel = np.abs(x - y) / np.abs(y)
    err = rel_error(x, y)
    return {"steps": [steps[0], steps[-1]], "max_rel": float(rel.max()),
            "mean_rel": float(rel.mean()), "curve_rel_error": err,
            "bf16_tolerance": tolerance("bfloat16"),
            "within_bf16": bool(err <= tolerance("bfloat16"))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="gla_340m")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch_size", type=int, default=0, help="global batch (default 8 x GPUs)")
    p.add_argument("--seq_len", type=int, default=2048)
    p.add_argument("--mesh_data", type=int, default=1)
    p.add_argument("--warmup", type=int, default=10, help="steps left out of the timing")
    p.add_argument("--base", default="runs/multi_gpu")
    p.add_argument("extra", nargs="*", help="more `python -m train` options (after --)")
    args = p.parse_args(argv)
    n = len(jax.devices())
    out = Path(os.environ.get("OUT") or "runs/multi_gpu_out")
    out.mkdir(parents=True, exist_ok=True)
    base = Path(args.base)
    batch = args.batch_size or 8 * n
    S = args.steps
    common = ["--preset", args.preset, "--data", "stdlib", "--batch_size", str(batch),
              "--seq_len", str(args.seq_len), "--steps", str(S), "--log_every", "25",
              "--eval_every", str(S), "--eval_batches", "2", "--progress", "lines", "--no-plot",
              "--timing_warmup", str(args.warmup), "--overwrite", *args.extra]
    print(f"{n} x {jax.devices()[0].device_kind}, NCCL_NVLS_ENABLE="
          f"{os.environ.get('NCCL_NVLS_ENABLE')}", flush=True)
    one = _run(common + ["--run_dir", str(base / "one"), "--num_devices", "1", "--no-checkpoint"])
    fsdp = n // args.mesh_data
    many = _run(common + ["--run_dir", str(base / "all"), "--mesh_data", str(args.mesh_data),
                          "--mesh_fsdp", str(fsdp), "--save_every", str(S // 2), "--keep", "3"])
    resumed_dir = base / "resumed"
    shutil.rmtree(resumed_dir, ignore_errors=True)
    shutil.copytree(base / "all", resumed_dir)
    shutil.rmtree(resumed_dir / "checkpoints" / str(S))
    resumed = _run(["--resume", "--run_dir", str(resumed_dir), "--num_devices", "1",
                    "--mesh_data", "1", "--mesh_fsdp", "1", "--progress", "lines"])

    s1, sn = one["summary"], many["summary"]
    tps1, tpsn = s1["tokens_per_s"], sn["tokens_per_s"]
    report = {
        "device": s1["device"], "num_gpus": n, "mesh": f"data={args.mesh_data} x fsdp={fsdp}",
        "preset": args.preset, "global_batch": batch, "seq_len": args.seq_len, "steps": S,
        "one": s1, "all": sn, "resumed": resumed["summary"],
        "tokens_per_s_one": tps1, "tokens_per_s_all": tpsn,
        "tokens_per_s_per_gpu_all": tpsn / n, "scaling_efficiency": tpsn / (n * tps1),
        "loss_all_vs_one": _compare(many["losses"], one["losses"], list(range(1, S + 1))),
        "loss_resumed_vs_all": _compare(resumed["losses"], many["losses"],
                                        list(range(S // 2 + 1, S + 1))),
        "val_loss": {"one": s1["final_val_loss"], "all": sn["final_val_loss"],
                     "resumed": resumed["summary"]["final_val_loss"]},
    }
    (out / "multi_gpu.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"\n{args.preset} B={batch} T={args.seq_len}, {S} steps, stdlib bytes, {report['device']}")
    print("| run | GPUs | mesh | tokens/s | tokens/s/GPU | step ms | MFU | peak GiB |")
    print("|---|---|---|---|---|---|---|---|")
    for name, s, k, mesh in (("one", s1, 1, "1x1"), ("all", sn, n, report["mesh"]),
                             ("resumed", resumed["summary"], 1, "1x1")):
        peak, mfu = s["peak_memory_bytes"], s["mfu"]
        print(f"| {name} | {k} | {mesh} | {s['tokens_per_s']:,.0f} | "
              f"{s['tokens_per_s'] / k:,.0f} | {s['step_ms']:.1f} | "
              f"{'n/a' if mfu is None else f'{100 * mfu:.1f}%'} | "
              f"{'n/a' if peak is None else f'{peak / 2**30:.2f}'} |")
    print(f"scaling efficiency {report['scaling_efficiency']:.3f}")
    for key in ("loss_all_vs_one", "loss_resumed_vs_all"):
        c = report[key]
        print(f"{key}: steps {c['steps']}, max rel {c['max_rel']:.2e}, mean rel "
              f"{c['mean_rel']:.2e}, curve rel error {c['curve_rel_error']:.2e} "
              f"(bf16 tolerance {c['bf16_tolerance']:.0e}: {'ok' if c['within_bf16'] else 'OVER'})")
    print(f"val loss: {report['val_loss']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
