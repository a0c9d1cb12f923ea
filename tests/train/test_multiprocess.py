"""Two processes x 4 CPU devices over loopback (`python -m train --distributed`) train like one
process with 8 devices, on the same data x fsdp = 2 x 4 mesh.

Made once per module: `one`, an uninterrupted run of one process (checkpoints 2, 4, 6), and
`two`, the same run by two processes. Each case resumes a copy of one of them; a compilation
cache shared with the subprocesses keeps the repeated compiles of the tiny model cheap. Every
subprocess is killed when its case ends, whatever happened (tests/train/processes.py).
"""

import ipaddress
import json
import shutil
import zlib

import jax
import numpy as np
import pytest

from jaxla.testing import assert_close
from tests.conftest import SEED
from train import loop
from train.checkpoint import Checkpointer

from .distributed_driver import KERNEL_OPS, kernel_case
from .helpers import compile_cache, corpus, tiny_args, tiny_config
from .processes import describe, free_port, launch_args, run_processes

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(len(jax.devices()) < 8, reason="needs 8 devices (tests/conftest.py)"),
    pytest.mark.xdist_group("multiprocess"),  # one worker makes the module's runs once
]

# Every device: 8 in this process (tests/conftest.py), 2 x 4 in the two-process runs.
COMMON = ("--steps", "6", "--save_every", "2", "--eval_every", "6", "--keep", "3", "--no-plot",
          "--seq_len", "16", "--num_devices", "none", "--mesh_fsdp", "4", "--progress", "lines")
HEARTBEAT = 10  # seconds after which the coordination service gives a silent process up
TIMEOUT = 420  # seconds for all processes of one launch, whatever happens


@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory):
    with compile_cache(tmp_path_factory.mktemp("jax_cache")):
        yield


def _train_in_two(run_dir, argv, log_dir, die_after: dict[int, int] | None = None):
    """`python -m train --distributed ... ARGV` in two processes; `die_after[i] = s` kills
    process i after step s."""
    port, die_after = free_port(), die_after or {}
    commands = [["train", *(["--die_after", str(die_after[i])] if i in die_after else []), "--",
                 *launch_args(port, 2, i, HEARTBEAT), *argv] for i in range(2)]
    return run_processes(commands, log_dir, timeout=TIMEOUT)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, request):
    """`{"data": corpus, "one": the one-process result, "two": run folder, "two_procs": the
    two processes' ends}`."""
    base = tmp_path_factory.mktemp("multiprocess")
    rng = np.random.default_rng([SEED, zlib.crc32(request.node.nodeid.encode())])
    data = corpus(base, rng)
    one = loop.train(tiny_config(base / "one", data, *COMMON), echo=lambda *a: None)
    assert one["summary"]["num_devices"] == 8 and one["summary"]["num_processes"] == 1
    two = base / "two"
    procs = _train_in_two(two, tiny_args(two, data, *COMMON), base / "two_logs")
    return {"data": data, "one": one, "two": two, "two_procs": procs}


def _logged_losses(run_dir) -> dict[int, float]:
    records = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["loss"] for r in records if r["event"] == "train"}
    assert len(losses) == sum(r["event"] == "train" for r in records), "a step logged twice"
    return losses


def _assert_losses_equal(got: dict[int, float], want: dict[int, float], steps: list[int]):
    """Equal to float32 rounding: the collectives of two processes (gloo) add in another order
    than those within one process."""
    assert sorted(got) == steps, sorted(got)
    err = assert_close(np.array([got[s] for s in steps], np.float32),
                       np.array([want[s] for s in steps], np.float32),
                       name=f"losses of steps {steps}")
    print(f"losses of steps {steps}: relative error {err:.1e}")


def _copy_until(run_dir, step, dest):
    """A copy of `run_dir` whose newest checkpoint is `step`."""
    shutil.copytree(run_dir, dest)
    for later in Checkpointer(dest).all_steps():
        if later > step:
            shutil.rmtree(dest / "checkpoints" / str(later))
    return dest


def _reported_saves(output: str) -> list[int]:
    return [int(ln.split(":")[0].split()[1]) for ln in output.splitlines()
            if ln.startswith("step ") and ": saved " in ln]


def _is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def test_two_processes_train_like_one_process_with_eight_devices(runs):
    procs, one = runs["two_procs"], runs["one"]
    assert [p.rc for p in procs] == [0, 0], describe(procs)
    assert "8 x cpu in 2 processes, mesh data=2 x fsdp=4" in procs[0].output
    assert "jaxla train:" not in procs[1].output  # process 0 alone prints and logs
    _assert_losses_equal(_logged_losses(runs["two"]), one["losses"], list(range(1, 7)))
    summary = json.loads((runs["two"] / "summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["num_devices"] == 8
    assert_close(np.float32(summary["final_val_loss"]),
                 np.float32(one["summary"]["final_val_loss"]), name="val loss")
    assert _reported_saves(procs[0].output) == [2, 4, 6]
    # Each process loaded the rows of its own 4 devices of the batch of 8, and nothing else.
    for p, rows in zip(procs, ([0, 1, 2, 3], [4, 5, 6, 7]), strict=True):
        assert f"rows: {json.dumps(rows)}" in p.output.splitlines()
    ckpt = Checkpointer(runs["two"])
    assert all(ckpt.check(s) is None for s in ckpt.all_steps())
    # Every TCP socket the processes hold (coordinator, clients, gloo) is on loopback.
    for p in procs:
        [line] = [ln for ln in p.output.splitlines() if ln.startswith("sockets: ")]
        sockets = json.loads(line.removeprefix("sockets: "))
        assert sockets, "no TCP socket found: the check sees nothing"
        for local, remote in sockets:
            assert _is_loopback(local), (local, remote)
            assert _is_loopback(remote) or ipaddress.ip_address(remote).is_unspecified, remote


def test_checkpoint_of_two_processes_resumes_in_one(runs, tmp_path):
    run = _copy_until(runs["two"], 2, tmp_path / "run")
    resumed = loop.train(loop.parse_args(["--resume", "--run_dir", str(run)], backend="cpu"),
                         echo=lambda *a: None)
    assert resumed["summary"]["num_processes"] == 1 and resumed["summary"]["num_devices"] == 8
    _assert_losses_equal(resumed["losses"], runs["one"]["losses"], [3, 4, 5, 6])


@pytest.fixture(scope="module")
def one_resumed_in_two(runs, tmp_path_factory):
    """The one-process run's checkpoint 2 resumed by two processes; process 1 is killed
    (SIGKILL) after step 4, whose checkpoint is then complete."""
    base = tmp_path_factory.mktemp("one_in_two")
    run = _copy_until(runs["one"]["run_dir"], 2, base / "run")
    procs = _train_in_two(run, ["--resume", "--run_dir", str(run), "--progress", "lines"],
                          base / "logs", die_after={1: 4})
    return {"run": run, "procs": procs}


def test_checkpoint_of_one_process_resumes_in_two(runs, one_resumed_in_two):
    run, procs = one_resumed_in_two["run"], one_resumed_in_two["procs"]
    assert f"resumed from {run.absolute() / 'checkpoints' / '2'} at step 2" in procs[0].output, \
        describe(procs)
    losses = {s: v for s, v in _logged_losses(run).items() if s > 2}
    _assert_losses_equal(losses, runs["one"]["losses"], [3, 4])


def test_a_lost_process_stops_the_other_and_the_last_save_resumes_exactly(
        runs, one_resumed_in_two, tmp_path):
    run, (survivor, killed) = one_resumed_in_two["run"], one_resumed_in_two["procs"]
    assert killed.rc == -9, describe([survivor, killed])
    # JAX's coordination service misses process 1's heartbeats and ends process 0 with its
    # message, within the heartbeat timeout (plus the polling of the service).
    assert survivor.rc is not None, "process 0 hung after losing process 1\n" + survivor.output
    assert survivor.rc != 0
    assert "detected fatal errors" in survivor.output and "another task died" in survivor.output
    assert survivor.ended - killed.ended < HEARTBEAT + 30, survivor.ended - killed.ended
    # The last checkpoint reported saved is complete, and resuming from it is exact.
    saved = _reported_saves(survivor.output)
    assert saved == [4], saved
    assert Checkpointer(run).check(4) is None
    resumed = loop.train(loop.parse_args(["--resume", "--run_dir", str(run)], backend="cpu"),
                         echo=lambda *a: None)
    _assert_losses_equal(resumed["losses"], runs["one"]["losses"], [5, 6])


def test_pallas_kernels_split_the_batch_over_both_processes(tmp_path, rng):
    """`shard_map` over a mesh of both processes' devices: each kernel call runs on the 4
    local batch slices of each process, and losses and gradients match one process."""
    seed, out = int(rng.integers(2**31)), tmp_path / "kernels.npz"
    port = free_port()
    procs = run_processes([["kernels", str(seed), str(out), *launch_args(port, 2, i, HEARTBEAT)]
                           for i in range(2)], tmp_path / "logs", timeout=TIMEOUT)
    assert [p.rc for p in procs] == [0, 0], describe(procs)
    got = np.load(out)
    for op in KERNEL_OPS:
        step, args = kernel_case(seed, op)
        want_loss, want_grads = step(*args)  # one device of this process
        assert_close(got[f"{op}/loss"], np.asarray(want_loss), name=f"{op} loss")
        for i, want in enumerate(want_grads):
            assert_close(got[f"{op}/grad{i}"], np.asarray(want), name=f"{op} grad {i}")
