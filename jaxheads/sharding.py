"""Device meshes for data-parallel scans: prompts are split over a `data` axis, parameters replicated."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def data_mesh(devices=None) -> Mesh:
    """A one-axis mesh named `data` over `devices` (default: every visible device)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), ("data",))


def replicate(tree, mesh: Mesh):
    """Puts every array of `tree` on all devices of `mesh`."""
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def shard_rows(array, mesh: Mesh):
    """Splits `array`'s leading (batch) axis over the mesh's `data` axis."""
    return jax.device_put(array, NamedSharding(mesh, PartitionSpec("data")))
