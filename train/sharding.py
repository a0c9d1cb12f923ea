"""The device mesh ("data", "fsdp") and where arrays live on it.

* Batches: the batch axis is split over both axes (data x fsdp devices each get a slice).
* Parameters and optimizer state (FSDP, ZeRO-3 style): each array is split over "fsdp" along its
  largest axis whose size the fsdp axis divides (the first such axis on ties), replicated when no
  axis divides or fsdp = 1. XLA inserts the all-gathers before use and the reduce-scatters of
  the gradients.

The same code runs on one device (a 1 x 1 mesh), several CPU devices or several GPUs.
"""

from __future__ import annotations

import jax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

AXES = ("data", "fsdp")
BATCH_AXES = ("data", "fsdp")


def make_mesh(num_devices: int | None = None, data: int = -1, fsdp: int = 1) -> jax.sharding.Mesh:
    """A ("data", "fsdp") mesh over the first `num_devices` devices (default all).

    `data = -1` takes the devices left over by `fsdp`. Raises when the sizes do not multiply to
    the device count.
    """
    devices = jax.devices()
    n = len(devices) if num_devices is None else num_devices
    if not 1 <= n <= len(devices):
        raise ValueError(f"num_devices={num_devices} but {len(devices)} devices are visible")
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
