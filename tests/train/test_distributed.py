"""`--distributed`'s launch options: flags, the environment, and their one-line errors. The runs
of several processes themselves: tests/train/test_multiprocess.py."""

import os
import subprocess
import sys

import jax
import pytest

from train import loop
from train.config import parse_launch_args
from train.distributed import LaunchError, LaunchOptions, is_loopback

from .processes import ROOT, launch_env

LAUNCH_VARS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


@pytest.fixture
def clean_env(monkeypatch):
    for name in LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_launch_options_come_from_flags_else_the_environment(clean_env, rng):
    port, n = int(rng.integers(1024, 65536)), int(rng.integers(2, 9))
    i = int(rng.integers(0, n))
    assert parse_launch_args([]) == LaunchOptions()  # not distributed: nothing read
    for name, value in launch_env(port, n, i).items():
        clean_env.setenv(name, value)
    got = parse_launch_args(["--distributed", "--heartbeat_timeout", "7"])
    assert got == LaunchOptions(True, f"127.0.0.1:{port}", n, i, heartbeat_timeout=7)
    got = parse_launch_args(["--distributed", "--coordinator_address", "10.0.0.1:99",
                             "--process_id", str(n - 1 - i)])  # flags win over the environment
    assert got == LaunchOptions(True, "10.0.0.1:99", n, n - 1 - i)


# (environment, command line, what the one line must say)
ENV_CASES = {
    "count not a number": ({"JAX_NUM_PROCESSES": "two"}, ["--distributed"],
                           "--num_processes: $JAX_NUM_PROCESSES must be an integer, got 'two'"),
    "id out of range": ({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"}, ["--distributed"],
                        "--process_id: must be < --num_processes 2, got 2"),
    "bad address": ({"JAX_COORDINATOR_ADDRESS": "host0:port"}, ["--distributed"],
                    "--coordinator_address: must be HOST:PORT, got 'host0:port'"),
    # Each of the processes would otherwise train the whole run alone, in the same folder.
    "several processes, not distributed": (
        {"JAX_NUM_PROCESSES": "4"}, [], "--distributed: missing, but $JAX_NUM_PROCESSES is 4: "
                                        "pass --distributed to join the run of 4 processes"),
    # jax.distributed.initialize must come first in a process.
    "devices already in use": ({}, ["--distributed", "--coordinator_address", "127.0.0.1:1",
                                    "--num_processes", "2", "--process_id", "0"],
                               "--distributed: this process has already used JAX's devices"),
}


@pytest.mark.parametrize("case", list(ENV_CASES))
def test_bad_launch_environment_gets_one_line_and_status_2(clean_env, tmp_path, capsys, case):
    env, argv, expected = ENV_CASES[case]
    for name, value in env.items():
        clean_env.setenv(name, value)
    jax.devices()  # this test process has used JAX already
    run = tmp_path / "run"
    assert loop.main([*argv, "--run_dir", str(run), "--steps", "1"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"train: error: {expected}"), lines
    assert not run.exists()


def test_coordinator_neither_given_nor_detected_gets_one_line_and_status_2(tmp_path):
    """A fresh process (`python -m train`), as a user starts it, outside any cluster."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    run = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "train", "--distributed", "--num_processes",
                           "2", "--process_id", "1", "--run_dir", str(run)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.splitlines() == [
        "train: error: --coordinator_address: not given and not detected (coordinator_address "
        "should be defined.); give --coordinator_address or $JAX_COORDINATOR_ADDRESS, or run "
        "under a cluster JAX detects"], done.stderr
    assert not run.exists()


@pytest.mark.parametrize("address, loopback", [
    ("127.0.0.1:8476", True), ("127.1.2.3:1", True), ("localhost:1", True), ("[::1]:1", True),
    ("10.0.0.1:8476", False), ("host0:8476", False), ("[2001:db8::1]:1", False)])
def test_is_loopback(address, loopback):
    assert is_loopback(address) is loopback


def test_launch_errors_are_value_errors():
    with pytest.raises(LaunchError, match="--num_processes: must be >= 1, got 0"):
        parse_launch_args(["--distributed", "--num_processes", "0"])
    assert issubclass(LaunchError, ValueError)
