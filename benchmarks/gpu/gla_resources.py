"""Registers, spills and shared memory of the GLA kernels for an H100, without a GPU (what the
compiler makes of each kernel; their speed is `python -m benchmarks.kernels`, on the GPU).

    TRITON_PYTHON=/path/to/python PYTHONPATH=. python -m benchmarks.gpu.gla_resources \\
        [--shape B T H K V] [--dtype bfloat16] [--set field=value ...]

Lowers forward and backward of `chunk_gla` and `fused_recurrent_gla` for an H100 on this machine
(as `pallas_kernels._common.lower_for_cuda` does), captures the Triton module (TTIR) of every
`pallas_call`, and compiles each for sm_90 with the `triton` package of TRITON_PYTHON (an
interpreter with `pip install triton==3.6.0`, the GPU image's version, e.g. in a throwaway venv:
it needs no GPU and no torch). Prints registers per thread and spill bytes (ptxas -v) and shared
memory per program. XLA compiles the same TTIR with its own bundled Triton, so the numbers are a
close guide, not the GPU's exact figures. `--set` overrides BlockSizes fields (e.g. block_k=64).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
from jax._src.pallas.triton import pallas_call_registration as registration

from benchmarks.kernels import registry
from pallas_kernels._common import lower_for_cuda, padded_dim
from pallas_kernels.gla import BlockSizes, chunk_gla, fused_recurrent_gla

COMPILE = r"""
import glob, json, os, re, subprocess, sys, tempfile
import triton
from triton.backends.compiler import GPUTarget
ptxas = glob.glob(os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/ptxas*"))[0]
for job in json.load(open(sys.argv[1])):
    try:
        k = triton.compile(job["path"], target=GPUTarget("cuda", 90, 32),
                           options=dict(num_warps=job["warps"], num_stages=job["stages"]))
    except Exception as e:
        print(json.dumps({"name": job["name"], "error": f"{type(e).__name__}: {e}"[:300]}))
        continue
    ptx = tempfile.mktemp(suffix=".ptx")
    open(ptx, "w").write(k.asm["ptx"])
    log = subprocess.run([ptxas, "-v", "--gpu-name=sm_90a", ptx, "-o", "/dev/null"],
                         capture_output=True, text=True).stderr
    regs = re.search(r"Used (\d+) registers", log)
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    print(json.dumps({"name": job["name"], "shared": k.metadata.shared,
                      "regs": int(regs.group(1)) if regs else None,
                      "spill": [int(spill.group(1)), int(spill.group(2))] if spill else None}))
"""

# kernel name -> (num_warps field, num_stages field) of BlockSizes
LAUNCH = {
    "gla_chunk_fwd_states": ("num_warps_state", "num_stages_state"),
    "gla_chunk_bwd_state_grads": ("num_warps_state", "num_stages_state"),
    "gla_chunk_fwd_output": ("num_warps_fwd", "num_stages_fwd"),
    "gla_chunk_bwd_grads": ("num_warps_bwd", "num_stages_bwd"),
    "gla_recurrent_fwd": ("num_warps_recurrent", "num_stages_recurrent"),
    "gla_recurrent_bwd_dq": ("num_warps_recurrent", "num_stages_recurrent"),
    "gla_recurrent_bwd_dkv": ("num_warps_recurrent", "num_stages_recurrent"),
}


def capture_ttir(shape, dtype, bs: BlockSizes):
    """{kernel name: TTIR text} for fwd + bwd of both GLA forms at `shape`."""
    captured = {}
    lower = registration.lowering.lower_jaxpr_to_triton_module

    def hook(jaxpr, *args, **kwargs):
        result = lower(jaxpr, *args, **kwargs)
        captured[jaxpr.debug_info.func_name] = result.module.operation.get_asm()
        return result

    B, T, H, K, V = shape
    q = jnp.ones((B, T, H, K), dtype)
    v = jnp.ones((B, T, H, V), dtype)
    g = -jnp.ones(q.shape, jnp.float32)
    h0 = jnp.ones((B, H, K, V), jnp.float32)

    def loss(q, k, v, g, h0):
        total = 0.0
        for fn, t in ((chunk_gla, T), (fused_recurrent_gla, min(T, 64))):
            o, h = fn(q[:, :t], k[:, :t], v[:, :t], g[:, :t], initial_state=h0,
                      output_final_state=True, block_sizes=bs, interpret=False)
            total = total + o.astype(jnp.float32).sum() + h.sum()
        return total

    registration.lowering.lower_jaxpr_to_triton_module = hook
    try:
        lower_for_cuda(jax.grad(loss, argnums=(0, 1, 2, 3, 4)), q, q, v, g, h0)
    finally:
        registration.lowering.lower_jaxpr_to_triton_module = lower
    return captured


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    anchor = registry.shape_named("gla", "anchor").dims
    parser.add_argument("--shape", type=int, nargs=5, default=[anchor[d] for d in "BTHKV"],
                        metavar=("B", "T", "H", "K", "V"),
                        help="default: the kernel benchmarks' GLA anchor shape")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE")
    args = parser.parse_args(argv)
    python = os.environ.get("TRITON_PYTHON")
    if not python:
        sys.exit("set TRITON_PYTHON to an interpreter with `pip install triton==3.6.0`")
    K, V = padded_dim(args.shape[3]), padded_dim(args.shape[4])
    bs = BlockSizes.get_default(head_dim_k=K, head_dim_v=V)
    bs = dataclasses.replace(bs, **{k: json.loads(v) for k, v in (s.split("=") for s in args.set)})
    ttir = capture_ttir(tuple(args.shape), jnp.dtype(args.dtype), bs)
    folder = tempfile.mkdtemp(prefix="gla_ttir_")
    jobs = []
    for name, text in ttir.items():
        path = os.path.join(folder, f"{name}.ttir")
        with open(path, "w") as f:
            f.write(text)
        warps, stages = (getattr(bs, field) for field in LAUNCH[name])
        jobs.append({"name": name, "path": path, "warps": warps, "stages": stages})
    with open(os.path.join(folder, "jobs.json"), "w") as f:
        json.dump(jobs, f)
    with open(os.path.join(folder, "compile.py"), "w") as f:
        f.write(COMPILE)
    script, jobs_file = os.path.join(folder, "compile.py"), os.path.join(folder, "jobs.json")
    out = subprocess.run([python, script, jobs_file], capture_output=True, text=True, cwd=folder)
    print(f"GLA kernels for sm_90, shape {tuple(args.shape)} {args.dtype}, {bs}")
    print(f"{'kernel':<28}{'warps':>6}{'stages':>7}{'regs':>6}{'spill st/ld B':>15}{'shared B':>10}")
    by_name = {job["name"]: job for job in jobs}
    for line in out.stdout.splitlines():
        r = json.loads(line)
        job = by_name[r["name"]]
        if "error" in r:
            print(f"{r['name']:<28}{job['warps']:>6}{job['stages']:>7}  FAILED {r['error']}")
            continue
        spill = "?" if r["spill"] is None else f"{r['spill'][0]}/{r['spill'][1]}"
        print(f"{r['name']:<28}{job['warps']:>6}{job['stages']:>7}{r['regs']:>6}{spill:>15}"
              f"{r['shared']:>10}")
    if out.returncode:
        print(out.stderr[-2000:], file=sys.stderr)


if __name__ == "__main__":
    main()
