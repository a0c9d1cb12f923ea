"""mamba_ssm's CUDA selective scan, built on the GPU machine and timed beside jaxla's kernels.

The GPU image has no mamba_ssm (its PyPI release is source only, and its install step downloads a
prebuilt binary). This builds the `selective_scan_cuda` extension from the sdist's `csrc/` with
torch's JIT extension loader, for sm_90 only, and only the instantiations a bf16 Mamba layer uses
(bf16 inputs, float32 weights: `selective_scan_fwd_bf16.cu`, `selective_scan_bwd_bf16_real.cu`);
the other input/weight types link to stubs that raise. Same flags as mamba_ssm's setup.py.

  python3 -m benchmarks.gpu.mamba_ssm_ref build --src DIR   # compile (CPU only), minutes
  python3 -m benchmarks.gpu.mamba_ssm_ref bench --src DIR [--T 1024 ...] [--check FILE.npz]

`bench` times `fwd` and `fwd` + `bwd` (what `selective_scan_fn`'s autograd runs) with
`triton.testing.do_bench` on the inputs of `benchmarks.kernels.selective_scan.inputs` (same seed,
mamba_ssm's `[B, D, L]` layout), and with `--check` compares its output and gradients with the
float32 arrays that `benchmarks.gpu.scan_compare` saved for the same inputs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

STUB = r"""
#include <cstdint>
#include <cuda_runtime.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>
#include <c10/util/complex.h>
#include "selective_scan.h"

template <typename input_t, typename weight_t>
void selective_scan_fwd_cuda(SSMParamsBase &params, cudaStream_t stream) {
    TORCH_CHECK(false, "this build has only bf16 inputs with float32 weights");
}
template <typename input_t, typename weight_t>
void selective_scan_bwd_cuda(SSMParamsBwd &params, cudaStream_t stream) {
    TORCH_CHECK(false, "this build has only bf16 inputs with float32 weights");
}
template void selective_scan_fwd_cuda<c10::Half, float>(SSMParamsBase &, cudaStream_t);
template void selective_scan_fwd_cuda<c10::Half, c10::complex<float>>(SSMParamsBase &,
                                                                     cudaStream_t);
template void selective_scan_fwd_cuda<float, float>(SSMParamsBase &, cudaStream_t);
template void selective_scan_fwd_cuda<float, c10::complex<float>>(SSMParamsBase &, cudaStream_t);
template void selective_scan_bwd_cuda<c10::Half, float>(SSMParamsBwd &, cudaStream_t);
template void selective_scan_bwd_cuda<c10::Half, c10::complex<float>>(SSMParamsBwd &, cudaStream_t);
template void selective_scan_bwd_cuda<float, float>(SSMParamsBwd &, cudaStream_t);
template void selective_scan_bwd_cuda<float, c10::complex<float>>(SSMParamsBwd &, cudaStream_t);
template void selective_scan_bwd_cuda<c10::BFloat16, c10::complex<float>>(SSMParamsBwd &,
                                                                         cudaStream_t);
"""

NVCC_FLAGS = [
    "-O3", "-std=c++17",
    "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
    "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
    "-U__CUDA_NO_BFLOAT162_OPERATORS__", "-U__CUDA_NO_BFLOAT162_CONVERSIONS__",
    "--expt-relaxed-constexpr", "--expt-extended-lambda", "--use_fast_math", "-lineinfo",
]


def load(src: Path, build_dir: Path, jobs: int = 8):
    """Compile (or reuse) and import the extension."""
    os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"
    os.environ["MAX_JOBS"] = str(jobs)
    from torch.utils.cpp_extension import load as load_extension

    csrc = src / "csrc" / "selective_scan"
    build_dir.mkdir(parents=True, exist_ok=True)
    stub = build_dir / "unbuilt_types.cpp"
    if not stub.exists() or stub.read_text() != STUB:
        stub.write_text(STUB)
    return load_extension(
        name="selective_scan_cuda",
        sources=[str(csrc / "selective_scan.cpp"), str(csrc / "selective_scan_fwd_bf16.cu"),
                 str(csrc / "selective_scan_bwd_bf16_real.cu"), str(stub)],
        extra_include_paths=[str(csrc)],
        extra_cflags=["-O3", "-std=c++17"],
        extra_cuda_cflags=NVCC_FLAGS,
        build_directory=str(build_dir),
        verbose=False,
    )


def torch_inputs(T: int):
    """`benchmarks.kernels.selective_scan.inputs(T)` in mamba_ssm's layout, on the GPU."""
    import torch

    from benchmarks.kernels.selective_scan import inputs

    u, delta, A, Bm, Cm, D, z, bias = (np.asarray(x.astype("float32")) for x in inputs(T))

    def dev(x, dtype):
        return torch.from_numpy(np.ascontiguousarray(x)).to("cuda", dtype)

    bf, f32 = torch.bfloat16, torch.float32
    seq = lambda x: dev(x.transpose(0, 2, 1), bf)  # noqa: E731 - [B, T, D] -> [B, D, T]
    # [B, T, N] -> [B, 1, N, T]
    state = lambda x: dev(x.transpose(0, 2, 1)[:, None], bf)  # noqa: E731
    return (seq(u), seq(delta), dev(A, f32), state(Bm), state(Cm), dev(D, f32), seq(z),
            dev(bias, f32))


def bench(ext, T: int, check: Path | None):
    import torch

    from benchmarks.timing import time_torch
    from jaxla.testing import rel_error

    u, delta, A, Bm, Cm, D, z, bias = torch_inputs(T)
    gen = torch.Generator(device="cuda").manual_seed(T)
    dout = torch.randn(u.shape, device="cuda", generator=gen).to(torch.bfloat16)

    def fwd():
        return ext.fwd(u, delta, A, Bm, Cm, D, z, bias, True)

    def fwd_bwd():
        out, x, out_z = fwd()
        return ext.bwd(u, delta, A, Bm, Cm, D, z, bias, dout, x, out, None, True, False)

    row = {"T": T, "fwd_ms": time_torch(fwd), "fwd_bwd_ms": time_torch(fwd_bwd)}
    if check is not None:  # jaxla's arrays for the same inputs and a cotangent of ones
        want = np.load(check)
        ones = torch.ones_like(u)
        out, x, out_z = fwd()
        du, ddelta, dA, dB, dC, dD, dbias, dz = ext.bwd(
            u, delta, A, Bm, Cm, D, z, bias, ones, x, out, None, True, False)
        got = {"out": out_z.transpose(1, 2), "du": du.transpose(1, 2),
               "ddelta": ddelta.transpose(1, 2), "dz": dz.transpose(1, 2), "dA": dA,
               "dB": dB[:, 0].transpose(1, 2), "dC": dC[:, 0].transpose(1, 2), "dD": dD,
               "dbias": dbias}
        # rel_error raises on a shape mismatch
        row["rel_error_vs_jaxla"] = {name: rel_error(value.float().cpu().numpy(), want[name])
                                     for name, value in got.items()}
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("build", "bench"))
    parser.add_argument("--src", type=Path, required=True, help="unpacked mamba_ssm sdist")
    parser.add_argument("--build-dir", type=Path, default=Path("/tmp/mamba_ssm_build"))
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--T", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    parser.add_argument("--check", type=Path, help="npz from scan_compare (T = the first --T)")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    ext = load(args.src, args.build_dir, args.jobs)
    print(f"mamba_ssm selective_scan_cuda ready in {time.perf_counter() - start:.0f}s",
          flush=True)
    if args.what == "build":
        return
    rows = []
    for i, T in enumerate(args.T):
        row = bench(ext, T, args.check if i == 0 else None)
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = os.environ.get("OUT")
    if out:
        Path(out, "mamba_ssm.json").write_text(json.dumps(rows, indent=1))
    print(f"{'T':>6}{'mamba_ssm fwd ms':>18}{'fwd+bwd ms':>12}")
    for r in rows:
        print(f"{r['T']:>6}{r['fwd_ms']:>18.3f}{r['fwd_bwd_ms']:>12.3f}")


if __name__ == "__main__":
    sys.exit(main())
