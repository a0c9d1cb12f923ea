"""Two processes x 4 CPU devices over loopback (`python -m train --distributed`) train like one
process with 8 devices, on the same data x fsdp = 2 x 4 mesh.

Made once per module: `one`, an uninterrupted run of one process (checkpoints 2, 4, 6), `two`,
the same run by two processes (launch options as flags), and `one_resumed_in_two`, one's
checkpoint 2 resumed by two processes (launch options from the environment) of which one is
killed after step 4. The cases compare their losses (equal to float32 rounding: the processes'
collectives add in another order), the states they restored or saved (bitwise), and resume
copies of them. A compilation cache shared with the subprocesses keeps the repeated compiles of
the tiny model cheap. Every subprocess is killed when its launch ends, whatever happened
(tests/train/processes.py).
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
from train.checkpoint import Checkpointer, flatten

from .distributed_driver import KERNEL_OPS, kernel_case
from .helpers import compile_cache, corpus, tiny_args, tiny_config
from .processes import describe, free_port, launch_args, launch_env, run_processes

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(len(jax.devices()) < 8, reason="needs 8 devices (tests/conftest.py)"),
    pytest.mark.xdist_group("multiprocess"),  # one worker makes the module's runs once
]

# Every device: 8 in this process (tests/conftest.py), 2 x 4 in the two-process runs. One layer
# of the tiny model: the processes share every kind of parameter at half the compile time.
COMMON = ("--steps", "6", "--save_every", "2", "--eval_every", "6", "--keep", "3", "--no-plot",
          "--seq_len", "16", "--num_layers", "1", "--num_devices", "none", "--mesh_fsdp", "4",
          "--progress", "lines")
HEARTBEAT = 10  # seconds after which the coordination service gives a silent process up
TIMEOUT = 300  # seconds for all processes of one launch, whatever happens (~30-70 s needed)


@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory):
    with compile_cache(tmp_path_factory.mktemp("jax_cache")):
        yield


def _train_in_two(argv, out, die_after: dict[int, int] | None = None, via_env: bool = False):
    """`python -m train --distributed ... ARGV` in two processes, logs and states (the
    driver's `--state_out`) in `out`; `die_after[i] = s` kills process i after step s. With
    `via_env`, the coordinator, process count and id come from the environment."""
    port, die_after = free_port(), die_after or {}
    commands, envs = [], []
    for i in range(2):
        driver = ["--state_out", str(out), *(["--die_after", str(die_after[i])]
                                             if i in die_after else [])]
        launch = launch_args(port, 2, i, HEARTBEAT)
        if via_env:  # only --distributed and the timeouts as flags
            launch = [launch[0], *launch[-4:]]
        commands.append(["train", *driver, "--", *launch, *argv])
        envs.append(launch_env(port, 2, i) if via_env else {})
    return run_processes(commands, out / "logs", timeout=TIMEOUT, envs=envs)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, request):
    """`{"data": corpus, "one": the one-process result, "two": run folder, "two_procs": the
    two processes' ends, "two_final": their final state (.npz)}`."""
    base = tmp_path_factory.mktemp("multiprocess")
    rng = np.random.default_rng([SEED, zlib.crc32(request.node.nodeid.encode())])
    data = corpus(base, rng)
    one = loop.train(tiny_config(base / "one", data, *COMMON), echo=lambda *a: None)
    assert one["summary"]["num_devices"] == 8 and one["summary"]["num_processes"] == 1
    two = base / "two"
    # Keeping 2 checkpoints, process 0 deletes checkpoint 2 when it saves 6.
    procs = _train_in_two(tiny_args(two, data, *COMMON, "--keep", "2"), base / "two_out")
    return {"data": data, "one": one, "two": two, "two_procs": procs,
            "two_final": base / "two_out" / "final.npz"}


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


def _restored(run_dir, step, dest) -> dict[str, np.ndarray]:
    """The train state that `python -m train --resume` restores in this process (8 devices)
    from checkpoint `step` of a copy of `run_dir`, by checkpoint name."""
    run = loop.set_up(loop.parse_args(["--resume", "--run_dir", str(_copy_until(
        run_dir, step, dest))], backend="cpu"), echo=lambda *a: None)
    run.ckpt.close()
    assert run.start == step and run.mesh.size == 8
    return {name: np.asarray(x) for name, x in flatten(run.state)[0].items()}


def _assert_states_equal(got: dict, want: dict):
    """Bitwise: the same names, shapes, dtypes and values."""
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape, name
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
        assert got[name].tobytes() == want[name].tobytes(), name  # -0.0 and 0.0 too


def _copy_until(run_dir, step, dest):
    """A copy of `run_dir` whose newest checkpoint is `step`."""
    shutil.copytree(run_dir, dest)
    ckpt = Checkpointer(dest)
    for later in ckpt.all_steps():
        if later > step:
            shutil.rmtree(dest / "checkpoints" / str(later))
    ckpt.close()
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
        assert "val rows: [4, 4]" in p.output.splitlines()  # 2 validation batches, 4 rows each
    ckpt = Checkpointer(runs["two"])
    assert ckpt.all_steps() == [4, 6] and all(ckpt.check(s) is None for s in (4, 6))
    # Every TCP socket the processes hold (coordinator, clients, gloo) is on loopback.
    for p in procs:
        [line] = [ln for ln in p.output.splitlines() if ln.startswith("sockets: ")]
        sockets = json.loads(line.removeprefix("sockets: "))
        assert sockets, "no TCP socket found: the check sees nothing"
        for local, remote in sockets:
            assert _is_loopback(local), (local, remote)
            assert _is_loopback(remote) or ipaddress.ip_address(remote).is_unspecified, remote


def test_checkpoint_of_two_processes_resumes_in_one(runs, tmp_path):
    assert [p.rc for p in runs["two_procs"]] == [0, 0], describe(runs["two_procs"])
    # Checkpoint 6 restored by one process is the state the two processes held, bit for bit.
    _assert_states_equal(_restored(runs["two"], 6, tmp_path / "run6"),
                         dict(np.load(runs["two_final"])))
    run = _copy_until(runs["two"], 4, tmp_path / "run")
    resumed = loop.train(loop.parse_args(["--resume", "--run_dir", str(run)], backend="cpu"),
                         echo=lambda *a: None)
    assert resumed["summary"]["num_processes"] == 1 and resumed["summary"]["num_devices"] == 8
    _assert_losses_equal(resumed["losses"], runs["one"]["losses"], [5, 6])


@pytest.fixture(scope="module")
def one_resumed_in_two(runs, tmp_path_factory):
    """The one-process run's checkpoint 2 resumed by two processes (launch options from the
    environment); process 1 is killed (SIGKILL) after step 4, whose checkpoint is then
    complete."""
    base = tmp_path_factory.mktemp("one_in_two")
    run = _copy_until(runs["one"]["run_dir"], 2, base / "run")
    procs = _train_in_two(["--resume", "--run_dir", str(run), "--progress", "lines"],
                          base / "out", die_after={1: 4}, via_env=True)
    return {"run": run, "procs": procs, "restored": base / "out" / "restored.npz"}


def test_checkpoint_of_one_process_resumes_in_two(runs, one_resumed_in_two, tmp_path):
    run, procs = one_resumed_in_two["run"], one_resumed_in_two["procs"]
    assert f"resumed from {run.absolute() / 'checkpoints' / '2'} at step 2" in procs[0].output, \
        describe(procs)
    assert "8 x cpu in 2 processes" in procs[0].output  # the environment's launch options
    # The two processes restored exactly what one process restores from checkpoint 2.
    _assert_states_equal(dict(np.load(one_resumed_in_two["restored"])),
                         _restored(runs["one"]["run_dir"], 2, tmp_path / "run"))
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
    assert "The following tasks are unhealthy (stopped sending heartbeats):\n1\n" in \
        survivor.output  # it names the lost process
    assert survivor.ended - killed.ended < HEARTBEAT + 30, survivor.ended - killed.ended
    # The last checkpoint reported saved is complete and the newest, and resuming from it (in a
    # copy: the case before reads the run's log) continues the uninterrupted run's trajectory.
    saved = _reported_saves(survivor.output)
    assert saved == [4], saved
    ckpt = Checkpointer(run)
    assert ckpt.all_steps() == [2, 4] and ckpt.check(4) is None
    ckpt.close()
    run = _copy_until(run, 4, tmp_path / "run")
    resumed = loop.train(loop.parse_args(["--resume", "--run_dir", str(run)], backend="cpu"),
                         echo=lambda *a: None)
    assert resumed["summary"]["checkpoints"] == [6]
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
        (want_loss, magnitude), want_grads = step(*args)  # one device of this process
        assert_close(got[f"{op}/loss"], np.asarray(want_loss), name=f"{op} loss",
                     floor=1e-6 * float(magnitude))
        for i, want in enumerate(want_grads):
            assert_close(got[f"{op}/grad{i}"], np.asarray(want), name=f"{op} grad {i}")
