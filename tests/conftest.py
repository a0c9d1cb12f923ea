"""Test set-up: CPU with 8 fake devices unless a GPU is asked for, a fresh seed per session.

Set JAXLA_TEST_SEED to replay a run; the seed in use is printed in the header.
"""

import os
import time
import zlib

# Must happen before JAX initialises its backends.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
if "JAX_PLATFORMS" not in os.environ and not os.environ.get("JAXLA_TEST_GPU"):
    os.environ["JAX_PLATFORMS"] = "cpu"
os.environ.setdefault("JAXLA_TEST_SEED", str(int(time.time()) % 100_000))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

SEED = int(os.environ["JAXLA_TEST_SEED"])

# The smoke tests (`pytest -m smoke`): what ./run test runs again on the newest JAX of the
# supported range (README, "Set-up"). Every kernel in interpret mode on one small shape and
# lowered for CUDA, the ops' XLA paths, the layers' decode paths, a model, the kernels' cost
# estimates, XLA's loop counting, and a training run killed and resumed exactly. Kept to about a
# minute of a 2-core machine.
SMOKE = (
    "tests/kernels/test_gla_kernel.py::test_chunk_float32[B2-T65-H3-K100-V48-medium-interpret]",
    "tests/kernels/test_gla_kernel.py::test_recurrent_float32[B2-T63-H3-K48-V100-strong-interpret]",
    "tests/kernels/test_gla_kernel.py::test_every_kernel_lowers_for_cuda",
    "tests/kernels/test_simple_gla_kernel.py::test_chunked_matches_spec"
    "[B2-T65-H3-K100-V48-medium-both-h0-float32-interpret]",
    "tests/kernels/test_simple_gla_kernel.py::test_kernels_lower_for_cuda[bwd3-g-bf16]",
    "tests/kernels/test_selective_scan_kernel.py::test_matches_spec_float32"
    "[T65-D40-N12-G4-D1-z1-bias1-sp1-h01-small-interpret]",
    "tests/kernels/test_selective_scan_kernel.py::test_kernels_lower_for_cuda"
    "[B2-T100-D32-N16-GNone-opt0]",
    "tests/ops/test_every_op.py::test_matches_documents_one_by_one[gla-xla-segment_ids]",
    "tests/ops/test_every_op.py::test_matches_documents_one_by_one[selective_scan-xla-dense]",
    "tests/layers/test_decode.py::test_full_forward_equals_token_by_token_decode"
    "[gla-random_params]",
    "tests/layers/test_decode.py::test_full_forward_equals_token_by_token_decode"
    "[lightning_minimax-random_params]",
    "tests/layers/test_decode.py::test_full_forward_equals_token_by_token_decode"
    "[mamba-random_params]",
    "tests/layers/test_decode.py::test_full_forward_equals_token_by_token_decode"
    "[attention_gqa-random_params]",
    "tests/models/test_lm.py::test_implementation_reaches_every_mixer",
    "tests/flops/test_kernel_costs.py::test_estimates_match_the_formulas"
    "[gla-4x4096x16x128x128-bfloat16]",
    "tests/flops/test_xla.py::test_loop_undercount_detected_and_corrected[lowered]",
    "tests/train/test_checkpoint.py::test_save_check_restore_and_fall_back",
    "tests/train/test_loop.py::test_kill_and_resume_reproduces_the_uninterrupted_run",
)


def pytest_report_header(config):
    return f"jaxla: JAXLA_TEST_SEED={SEED}, jax {jax.__version__}, backend {jax.default_backend()}"


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects anything
def pytest_collection_modifyitems(config, items):
    if "smoke" in (config.option.markexpr or ""):  # whole files are collected: a renamed test
        collected = {item.nodeid for item in items}  # must not drop out of the set unnoticed
        files = {nodeid.split("::")[0] for nodeid in collected}
        missing = [t for t in SMOKE if t.split("::")[0] in files and t not in collected]
        if missing:
            raise pytest.UsageError(f"tests/conftest.py SMOKE names tests that do not exist: "
                                    f"{missing}")
    for item in items:
        if item.nodeid in SMOKE:
            item.add_marker(pytest.mark.smoke)
    if jax.default_backend() == "gpu":
        return
    skip = pytest.mark.skip(reason="needs a GPU (run with JAXLA_TEST_GPU=1 on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# Tests that compile many small programs and run each once or twice: on CPU, XLA's backend
# optimisation (LLVM at -O0, its expensive passes off; the HLO passes still run) costs more than
# it saves, about a third of these folders' time on a 2-core machine. What it could change,
# floating-point association, the tolerances already allow. tests/train runs training loops,
# which optimisation pays for, and tests/flops reads XLA's own counts: both keep the default.
FAST_COMPILE = ("tests/ops/", "tests/kernels/", "tests/layers/", "tests/models/",
                "tests/convert/")


@pytest.fixture(autouse=True)
def _fast_compile_on_cpu(request):
    fast = request.node.nodeid.startswith(FAST_COMPILE) and jax.default_backend() == "cpu"
    if fast:
        jax.config.update("jax_disable_most_optimizations", True)
    try:
        yield
    finally:
        if fast:
            jax.config.update("jax_disable_most_optimizations", False)


def pytest_runtest_logreport(report):
    """With JAXLA_TEST_FAILURES=FILE, each failure's report is appended to FILE as it happens:
    the GPU scripts' time limit can stop pytest before it prints its summary."""
    path = os.environ.get("JAXLA_TEST_FAILURES")
    if path and report.failed and "PYTEST_XDIST_WORKER" not in os.environ:  # once, in the main
        with open(path, "a") as f:
            f.write(f"== {report.nodeid} ({report.when})\n{report.longreprtext}\n")


@pytest.fixture
def rng(request):
    """A generator seeded by the session seed and the test's id: fresh per run, replayable."""
    return np.random.default_rng([SEED, zlib.crc32(request.node.nodeid.encode())])


@pytest.fixture
def x64():
    """Run the test body with float64 enabled."""
    with jax.enable_x64(True):
        yield
