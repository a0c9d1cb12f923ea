"""Running a Pallas kernel per device on its slice of the batch under a context mesh."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P


def batch_sharded_call(kernel: Callable, args: Sequence, batched: Sequence[bool]):
    """`kernel(*args)`, run per device on its slice of the batch when a mesh is set.

    A Pallas call is a custom call that XLA cannot partition: with a batch split over several
    devices it would gather every input onto each device and run the whole batch there. Under
    `jax.set_mesh` this splits axis 0 of the `batched` arguments (and of every output) over all
    the mesh's non-manual axes and runs the kernel once per device with `jax.shard_map`; the
    other arrays are replicated, and non-array arguments (None, numpy constants, Python numbers)
    are passed as they are. With no mesh, a 1-device mesh or a batch the mesh does not divide,
    it is a plain call.
    """
    mesh = jax.sharding.get_abstract_mesh()
    axes = () if mesh.empty else tuple(
        name for name, kind in zip(mesh.axis_names, mesh.axis_types, strict=True)
        if kind != AxisType.Manual)
    n_shards = math.prod(mesh.shape[name] for name in axes)
    batch = next(a.shape[0] for a, b in zip(args, batched, strict=True) if b and a is not None)
    if n_shards <= 1 or batch % n_shards:
        return kernel(*args)
    args = [jnp.asarray(a) if b and a is not None else a
            for a, b in zip(args, batched, strict=True)]
    traced = [i for i, a in enumerate(args) if isinstance(a, jax.Array)]

    def per_device(*values):
        full = list(args)
        for i, value in zip(traced, values, strict=True):
            full[i] = value
        return kernel(*full)

    return jax.shard_map(
        per_device, mesh=mesh, in_specs=tuple(P(axes) if batched[i] else P() for i in traced),
        out_specs=P(axes), axis_names=set(axes), check_vma=False,
    )(*(args[i] for i in traced))
