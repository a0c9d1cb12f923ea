"""One process of a test run of several (tests/train/processes.py starts them).

* `python distributed_driver.py train [--die_after STEP] [--state_out DIR] -- ARGS`:
  `python -m train ARGS`; with `--die_after`, this process kills itself (SIGKILL) right after
  step STEP + 1 is queued, so step STEP and its checkpoint are done. With `--state_out`, process
  0 writes the whole train state (gathered from every process) to DIR/restored.npz after a
  resume's restore and to DIR/final.npz at the end, keyed by the checkpoint's names. At the end
  it prints `rows: [...]` and `val rows: [...]`, the rows of the training and validation batches
  this process loaded, and `sockets: [[local, remote], ...]`, the TCP endpoints it holds.
* `python distributed_driver.py kernels SEED OUT ARGS`: with `ARGS` the launch options, runs the
  Pallas kernels of tests/ops/test_sharded_kernels.py under a data x fsdp mesh of every
  process's devices (loss and gradients with random cotangents from SEED) and process 0 saves
  the results to OUT (.npz) for the test to hold against one process's.

The process dies with the test process that started it (`PR_SET_PDEATHSIG`), even when that one
is killed outright, so that no test leaves a process behind.
"""

import ctypes
import functools
import ipaddress
import json
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

PARENT_ENV = "JAXLA_TEST_PARENT_PID"  # the test process's pid (tests/train/processes.py)


def die_with_parent():
    """SIGKILL this process when the test process that started it ends, however it ends."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != int(os.environ[PARENT_ENV]):  # it ended before the line above
        os._exit(1)


def tcp_endpoints() -> list[tuple[str, str]]:
    """`(local, remote)` address of each TCP socket this process holds, from /proc."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[len("socket:["):-1])
    found = []
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                found.append((_address(fields[1]), _address(fields[2])))
    return found


def _address(hex_address: str) -> str:
    """`0100007F:1F90` (/proc/net/tcp's little-endian words) -> `127.0.0.1`."""
    host = hex_address.split(":")[0]
    raw = b"".join(bytes.fromhex(host[i:i + 8])[::-1] for i in range(0, len(host), 8))
    return str(ipaddress.ip_address(raw))


def save_state(state, path: Path):
    """Every array of `state`, whole (a collective: every process calls it), written by
    process 0 to `path` (.npz) under the names a checkpoint gives them."""
    import jax
    import numpy as np
    from jax.experimental import multihost_utils

    from train.checkpoint import flatten

    flat, _ = flatten(state)
    arrays = {name: np.asarray(multihost_utils.process_allgather(x, tiled=True))
              for name, x in flat.items()}
    if jax.process_index() == 0:
        np.savez(path, **arrays)


def train(argv: list[str]) -> int:
    from train import loop

    options = {}
    while argv[0] != "--":
        options[argv[0]], argv = argv[1], argv[2:]
    die_after = options.get("--die_after")
    state_out = options.get("--state_out")
    if die_after is not None:

        def on_step(step, metrics):
            if step == int(die_after) + 1:
                sys.stdout.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            return metrics

        loop.train = functools.partial(loop.train, on_step=on_step)
    loaded = {}
    set_up, train_fn = loop.set_up, loop.train

    def recording_set_up(config, echo=print):
        run = set_up(config, echo)
        loaded["rows"] = None if run.dataset.rows is None else run.dataset.rows.tolist()
        loaded["val rows"] = [len(b["inputs"]) for b in run.dataset.val_batches]
        if state_out is not None and run.start:
            save_state(run.state, Path(state_out) / "restored.npz")
        return run

    def saving_train(config, **kwargs):
        result = train_fn(config, **kwargs)
        if state_out is not None:
            save_state(result["state"], Path(state_out) / "final.npz")
        return result

    loop.set_up, loop.train = recording_set_up, saving_train
    rc = loop.main(argv[1:])
    print("rows: " + json.dumps(loaded.get("rows")), flush=True)
    print("val rows: " + json.dumps(loaded.get("val rows")), flush=True)
    print("sockets: " + json.dumps(tcp_endpoints()), flush=True)
    return rc


# The two kernel families: GLA's (every argument split by batch) and the selective scan's (A and
# D replicated beside the batch-split arguments); the other ops call the same `shard_map`.
KERNEL_OPS = ("gla", "selective_scan")


def kernel_case(seed: int, op: str):
    """`(step, args)` of `op` (tests/ops/test_sharded_kernels.py): `step(*args)` is jitted and
    gives `((loss, magnitude), gradients)`, where the loss is `vdot(outputs, random cotangents)`
    and the magnitude the sum of its products' absolute values (a sum of ~1e4 products of both
    signs, added in another order on 8 devices, rounds in proportion to it, not to the loss);
    the arguments and cotangents are drawn from `seed` (the same in every process)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxla.testing import random_like
    from tests.ops.test_sharded_kernels import _cases

    rng = np.random.default_rng([seed, KERNEL_OPS.index(op)])
    fn, args = _cases(rng)[op]
    cotangents = jax.tree.map(lambda o: random_like(rng, o), jax.eval_shape(fn, *args))

    def loss(*args):
        pairs = list(zip(jax.tree.leaves(fn(*args)), jax.tree.leaves(cotangents), strict=True))
        magnitude = sum(jnp.sum(jnp.abs(o * c)) for o, c in pairs)
        return sum(jnp.vdot(o, c) for o, c in pairs), jax.lax.stop_gradient(magnitude)

    return jax.jit(jax.value_and_grad(loss, argnums=tuple(range(len(args))), has_aux=True)), args


def kernels(seed: int, out: str, launch: list[str]) -> int:
    from train.config import parse_launch_args
    from train.distributed import initialize, sync

    initialize(parse_launch_args(launch))

    import jax
    import numpy as np
    from jax.experimental import multihost_utils
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from tests.ops.test_sharded_kernels import B
    from train.sharding import make_mesh, put_from_host

    mesh = make_mesh(fsdp=4)  # data 2 x fsdp 4 over both processes' devices
    assert jax.process_count() > 1 and mesh.size == len(jax.devices())
    batch, replicated = NamedSharding(mesh, P(("data", "fsdp"))), NamedSharding(mesh, P())
    results = {}
    for op in KERNEL_OPS:
        step, args = kernel_case(seed, op)
        # Arrays with a batch axis are split over all 8 devices, 4 per process.
        shardings = [batch if a.shape[0] == B and a.ndim > 2 else replicated for a in args]
        placed = put_from_host([np.asarray(a) for a in args], shardings)
        with jax.set_mesh(mesh):
            jaxpr = str(jax.make_jaxpr(step)(*placed))
            compiled = step.lower(*placed).compile()
            sync(f"{op} compiled")  # a process that compiles more slowly delays no collective
            (value, _), grads = compiled(*placed)
        assert "shard_map" in jaxpr, op
        results[f"{op}/loss"] = np.asarray(value)
        for i, g in enumerate(grads):
            results[f"{op}/grad{i}"] = np.asarray(
                multihost_utils.process_allgather(g, tiled=True))
    if jax.process_index() == 0:
        np.savez(out, **results)
    print("kernels done", flush=True)
    return 0


def main() -> int:
    die_with_parent()
    command, *rest = sys.argv[1:]
    if command == "train":
        return train(rest)
    if command == "kernels":
        return kernels(int(rest[0]), rest[1], rest[2:])
    raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    sys.exit(main())
