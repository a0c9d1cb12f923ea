"""The device mesh ("data", "fsdp") and where arrays live on it.

* Batches: the batch axis is split over both axes (data x fsdp devices each get a slice).
* Parameters and optimizer state (FSDP, ZeRO-3 style): each array is split over "fsdp" along its
  largest axis whose size the fsdp axis divides (the first such axis on ties), replicated when no
  axis divides or fsdp = 1. XLA inserts the all-gathers before use and the reduce-scatters of
  the gradients.

* Several processes: each holds the shards of its own devices. `process_rows` says which batch
  rows those are, so that a process loads only them (`put_rows`), and `put_from_host` places
  host arrays that every process holds whole (the initial state) without any transfer between
  processes.

The same code runs on one device (a 1 x 1 mesh), several CPU devices or several GPUs, in one
process or several.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

AXES = ("data", "fsdp")
BATCH_AXES = ("data", "fsdp")


def make_mesh(num_devices: int | None = None, data: int = -1, fsdp: int = 1) -> jax.sharding.Mesh:
    """A ("data", "fsdp") mesh over the first `num_devices` devices (default all; all of them
    when there are several processes).

    `data = -1` takes the devices left over by `fsdp`. Raises when the sizes do not multiply to
    the device count.
    """
    devices = jax.devices()
    n = len(devices) if num_devices is None else num_devices
    if not 1 <= n <= len(devices):
        raise ValueError(f"num_devices={num_devices} but {len(devices)} devices are visible")
    if jax.process_count() > 1 and n != len(devices):
        raise ValueError(f"num_devices={num_devices}: a run of {jax.process_count()} processes "
                         f"uses the devices of every process, {len(devices)}")
    if data == -1:
        if n % fsdp:
            raise ValueError(f"mesh_fsdp={fsdp} must divide the {n} devices")
        data = n // fsdp
    if data * fsdp != n:
        raise ValueError(f"mesh_data x mesh_fsdp = {data} x {fsdp} != {n} devices")
    return jax.make_mesh((data, fsdp), AXES, axis_types=(AxisType.Auto,) * 2,
                         devices=devices[:n])


def batch_sharding(mesh) -> NamedSharding:
    """`[B, T]` arrays: B split over data x fsdp."""
    return NamedSharding(mesh, P(BATCH_AXES))


def fsdp_spec(shape: tuple[int, ...], fsdp_size: int) -> P:
    """The spec of one parameter-like array: "fsdp" on its largest divisible axis, if any."""
    if fsdp_size == 1 or not shape:
        return P()
    candidates = [(size, -axis) for axis, size in enumerate(shape) if size % fsdp_size == 0]
    if not candidates:
        return P()
    _, neg_axis = max(candidates)
    spec = [None] * len(shape)
    spec[-neg_axis] = "fsdp"
    return P(*spec)


def state_shardings(mesh, abstract_state):
    """NamedShardings for a pytree of arrays (or ShapeDtypeStructs) by the FSDP rule."""
    fsdp = mesh.shape["fsdp"]
    return jax.tree.map(lambda x: NamedSharding(mesh, fsdp_spec(tuple(x.shape), fsdp)),
                        abstract_state)


def process_rows(sharding: NamedSharding, batch_size: int) -> np.ndarray:
    """The rows of a `[batch_size, ...]` array under `sharding` (a batch sharding) that this
    process's devices hold: sorted global row indices (every row in a run of one process)."""
    index_map = sharding.addressable_devices_indices_map((batch_size,))
    rows = {r for index in index_map.values() for r in range(*index[0].indices(batch_size))}
    return np.array(sorted(rows), dtype=np.int64)


def put_rows(local: dict[str, np.ndarray], rows: np.ndarray, sharding: NamedSharding,
             batch_size: int) -> dict[str, jax.Array]:
    """Global `[batch_size, ...]` arrays from this process's rows: `local[name][i]` is global row
    `rows[i]` (`rows` from `process_rows`). Each process passes only its own rows; one that
    holds every row (a run of one process) places them with `jax.device_put`."""
    for name, x in local.items():
        if len(x) != len(rows):
            raise ValueError(f"{name}: {len(x)} rows for the {len(rows)} rows of this process")
    if len(rows) == batch_size:
        return jax.device_put(local, sharding)
    position = np.full(batch_size, -1, np.int64)
    position[rows] = np.arange(len(rows))

    def put(name: str, x: np.ndarray) -> jax.Array:
        def shard(index):
            wanted = np.arange(batch_size)[index[0]]
            held = position[wanted]
            if (held < 0).any():
                raise ValueError(f"{name}: a device of this process holds row "
                                 f"{wanted[held < 0][0]}, which is not in rows")
            return x[held][(slice(None), *index[1:])]

        return jax.make_array_from_callback((batch_size, *x.shape[1:]), sharding, shard)

    return {name: put(name, x) for name, x in local.items()}


def put_from_host(tree, shardings):
    """`tree` (host arrays that every process holds whole, e.g. an initial state computed from
    the seed) placed as `shardings` say: each process copies only its devices' shards (a run of
    one process: `jax.device_put`)."""
    if jax.process_count() == 1:
        return jax.device_put(tree, shardings)

    def put(x, sharding):
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, tree, shardings)
