"""One process of a test run of several (tests/train/processes.py starts them).

* `python distributed_driver.py train [--die_after STEP] -- ARGS`: `python -m train ARGS`; with
  `--die_after`, this process kills itself (SIGKILL) right after step STEP + 1 is queued, so step
  STEP and its checkpoint are done. At the end it prints `rows: [...]`, the training batch rows
  this process loaded, and `sockets: [[local, remote], ...]`, the TCP endpoints it holds.
* `python distributed_driver.py kernels SEED OUT ARGS`: with `ARGS` the launch options, runs the
  Pallas kernels of tests/ops/test_sharded_kernels.py under a data x fsdp mesh of every
  process's devices (loss and gradients with random cotangents from SEED) and process 0 saves
  the results to OUT (.npz) for the test to hold against one process's.
"""

import functools
import ipaddress
import json
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


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


def train(argv: list[str]) -> int:
    from train import data, loop

    die_after = None
    if argv[0] == "--die_after":
        die_after, argv = int(argv[1]), argv[2:]
    assert argv[0] == "--", argv
    if die_after is not None:

        def on_step(step, metrics):
            if step == die_after + 1:
                sys.stdout.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            return metrics

        loop.train = functools.partial(loop.train, on_step=on_step)
    loaded = set()
    train_batch = data.Dataset.train_batch

    def recording_train_batch(self, step, rows=None):
        assert rows is not None, "the loop loads a whole batch"
        loaded.update(rows.tolist())
        return train_batch(self, step, rows)

    data.Dataset.train_batch = recording_train_batch
    rc = loop.main(argv[1:])
    print("rows: " + json.dumps(sorted(loaded)), flush=True)
    print("sockets: " + json.dumps(tcp_endpoints()), flush=True)
    return rc


# The two kernel families: GLA's (every argument split by batch) and the selective scan's (A and
# D replicated beside the batch-split arguments); the other ops call the same `shard_map`.
KERNEL_OPS = ("gla", "selective_scan")


def kernel_case(seed: int, op: str):
    """`(loss_and_grads, args)` of `op` (tests/ops/test_sharded_kernels.py): a jitted function
    of the op's arguments giving `vdot(outputs, random cotangents)` and its gradients, and the
    arguments, drawn from `seed` (the same in every process)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxla.testing import random_like
    from tests.ops.test_sharded_kernels import _cases

    rng = np.random.default_rng([seed, KERNEL_OPS.index(op)])
    fn, args = _cases(rng)[op]
    cotangents = jax.tree.map(lambda o: random_like(rng, o), jax.eval_shape(fn, *args))

    def loss(*args):
        pairs = zip(jax.tree.leaves(fn(*args)), jax.tree.leaves(cotangents), strict=True)
        return sum(jnp.vdot(o, c) for o, c in pairs)

    return jax.jit(jax.value_and_grad(loss, argnums=tuple(range(len(args))))), args


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
            value, grads = compiled(*placed)
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
    command, *rest = sys.argv[1:]
    if command == "train":
        return train(rest)
    if command == "kernels":
        return kernels(int(rest[0]), rest[1], rest[2:])
    raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    sys.exit(main())
