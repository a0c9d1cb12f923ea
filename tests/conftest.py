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


def pytest_report_header(config):
    return f"jaxla: JAXLA_TEST_SEED={SEED}, jax {jax.__version__}, backend {jax.default_backend()}"


def pytest_collection_modifyitems(config, items):
    if jax.default_backend() == "gpu":
        return
    skip = pytest.mark.skip(reason="needs a GPU (run with JAXLA_TEST_GPU=1 on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def rng(request):
    """A generator seeded by the session seed and the test's id: fresh per run, replayable."""
    return np.random.default_rng([SEED, zlib.crc32(request.node.nodeid.encode())])


@pytest.fixture
def x64():
    """Run the test body with float64 enabled."""
    with jax.enable_x64(True):
        yield
