"""Builds mamba_ssm's CUDA selective scan on the GPU machine, so that the kernel benchmarks'
`mamba_ssm` variant (`python -m benchmarks.kernels --op selective_scan`) can run it.

The GPU image has no mamba_ssm (its PyPI release is source only, and its install step downloads a
prebuilt binary). This builds the `selective_scan_cuda` extension from the sdist's `csrc/` with
torch's JIT extension loader, for sm_90 only, and only the instantiations a bf16 Mamba layer uses
(bf16 inputs, float32 weights: `selective_scan_fwd_bf16.cu`, `selective_scan_bwd_bf16_real.cu`);
the other input/weight types link to stubs that raise. Same flags as mamba_ssm's setup.py.

  python3 -m benchmarks.gpu.mamba_ssm_ref --src DIR [--build-dir /tmp/mamba_ssm_build]

Compiles on the CPU (minutes; `--jobs` nvcc processes), then imports
`mamba_ssm.ops.selective_scan_interface.selective_scan_fn` with the sdist folder (its
`mamba_ssm` package) and the build folder (the extension) on sys.path and prints that
PYTHONPATH: other processes import mamba_ssm with it (`benchmarks/gpu/stages.sh`, stage
`mamba_ssm`, exports it). Exit status 0 only when the import works.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

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


def importable(src: Path, build_dir: Path, ext=None) -> str:
    """Puts `src` (the sdist's `mamba_ssm` package) and `build_dir` (the extension) on sys.path,
    imports `selective_scan_fn` and returns mamba_ssm's version."""
    for folder in (build_dir, src):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    if ext is not None:  # the module `load` returned, so the library is not loaded twice
        sys.modules.setdefault("selective_scan_cuda", ext)
    import mamba_ssm
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn  # noqa: F401

    return mamba_ssm.__version__


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", type=Path, required=True, help="unpacked mamba_ssm sdist")
    parser.add_argument("--build-dir", type=Path, default=Path("/tmp/mamba_ssm_build"))
    parser.add_argument("--jobs", type=int, default=8, help="parallel nvcc jobs")
    args = parser.parse_args(argv)
    if not (args.src / "csrc" / "selective_scan").is_dir():
        parser.error(f"argument --src: {args.src} holds no csrc/selective_scan (an unpacked "
                     "mamba_ssm sdist does)")

    start = time.perf_counter()
    ext = load(args.src.resolve(), args.build_dir.resolve(), args.jobs)
    print(f"mamba_ssm selective_scan_cuda built in {time.perf_counter() - start:.0f}s", flush=True)
    version = importable(args.src.resolve(), args.build_dir.resolve(), ext)
    print(f"mamba_ssm {version}: selective_scan_fn imports with PYTHONPATH="
          f"{args.src.resolve()}:{args.build_dir.resolve()}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
