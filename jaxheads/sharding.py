"""Device meshes and parameter placement: rows of a batch split over a `data` axis, attention heads and MLP
width split over a `model` axis (tensor parallel), or parameters split over `data` too (FSDP-style).

The computations themselves carry no sharding code: parameters and inputs are placed on the mesh here and
`jax.jit` (GSPMD) propagates the layout through the model.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from jaxheads.errors import JaxheadsError

DATA, MODEL = "data", "model"


def make_mesh(data: int = -1, model: int = 1, devices=None) -> Mesh:
    """A `(data, model)` mesh over `devices` (default: every device of every process); -1 for `data` takes the
    devices the `model` axis leaves."""
    devices = jax.devices() if devices is None else list(devices)
    if model < 1 or len(devices) % model:
        raise JaxheadsError(f"the model axis ({model}) must be at least 1 and divide the {len(devices)} devices")
    data = len(devices) // model if data == -1 else data
    if data < 1 or data * model > len(devices):
        raise JaxheadsError(f"a {data} x {model} mesh needs {data * model} devices; {len(devices)} are visible")
    return jax.make_mesh((data, model), (DATA, MODEL), (AxisType.Auto, AxisType.Auto), devices=devices[:data * model])


def parse_mesh(text: str) -> Mesh:
    """The mesh of a `--mesh` flag: "" = every device data-parallel, "4,2" = data 4 x model 2, "-1,2" = the
    rest of the devices x model 2."""
    if not text.strip():
        return make_mesh()
    try:
        data, model = (int(part) for part in text.split(","))
    except ValueError as error:
        raise JaxheadsError(f"--mesh wants two sizes 'data,model' such as 4,2 or -1,2; got {text!r}") from error
    return make_mesh(data, model)


def put(array, sharding: NamedSharding) -> jax.Array:
    """A host `array` placed with `sharding`. When the sharding spans several processes, each process reads and
    transfers only the slices its own devices hold (so a host needs correct values only in its share of the
    rows), with none of the cross-host equality check `jax.device_put` runs on every call."""
    if sharding.is_fully_addressable:
        return jax.device_put(array, sharding)
    host = np.asarray(array)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def replicate(tree, mesh: Mesh):
    """Puts every array of `tree` on all devices of `mesh`."""
    return jax.tree.map(lambda array: put(array, NamedSharding(mesh, PartitionSpec())), tree)


def shard_rows(array, mesh: Mesh):
    """Splits `array`'s leading (batch) axis over the mesh's `data` axis."""
    return put(array, NamedSharding(mesh, PartitionSpec(DATA)))


def place_rows(tree, mesh: Mesh):
    """Splits the leading (batch) axis of every array of `tree` over `data` where it divides evenly; arrays
    whose rows do not divide (e.g. a 2-pair Surgery batch on 8 devices) are replicated."""
    def place(array):
        divides = np.ndim(array) > 0 and np.shape(array)[0] % mesh.shape[DATA] == 0
        return put(array, NamedSharding(mesh, PartitionSpec(DATA) if divides else PartitionSpec()))

    return jax.tree.map(place, tree)


def fsdp_specs(specs: Mapping[str, PartitionSpec], shapes: Mapping[str, tuple[int, ...]],
               data_size: int) -> dict[str, PartitionSpec]:
    """`specs` with, in each parameter, the largest axis that is not split yet and divides by `data_size` also
    split over `data` (FSDP-style: each device keeps a share of every large parameter)."""
    result = {}
    for name, shape in shapes.items():
        given = specs.get(name, PartitionSpec())
        spec = list(given) + [None] * (len(shape) - len(given))
        free = [axis for axis, size in enumerate(shape) if spec[axis] is None and size % data_size == 0]
        if free and data_size > 1:
            spec[max(free, key=lambda axis: shape[axis])] = DATA
            given = PartitionSpec(*spec)
        result[name] = given
    return result


def tree_shardings(tree, specs: Mapping[str, PartitionSpec], shapes: Mapping[str, tuple[int, ...]], mesh: Mesh):
    """A `NamedSharding` for every array of `tree`: an array found under the key of a parameter `name` and of
    that parameter's shape takes `specs[name]` (so parameters, gradients and optimizer moments share a
    layout); every other array (LoRA adapters, step counters, PRNG keys) is replicated."""
    def sharding(path, leaf):
        names = [key.key for key in path if isinstance(key, jax.tree_util.DictKey)]
        for name in reversed(names):
            if name in specs and tuple(np.shape(leaf)) == tuple(shapes[name]):
                return NamedSharding(mesh, specs[name])
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree_util.tree_map_with_path(sharding, tree)


def split_on_mesh(module, mesh: Mesh):
    """`nnx.split` of a model module with its parameters placed on `mesh` by the module class's tensor-parallel
    `partition_specs`: returns `(graphdef, state)`. An array already laid out on `mesh` (loaded onto it, with or
    without FSDP, or placed here before) stays where it is."""
    graphdef, state = nnx.split(module)
    specs = module.partition_specs(module.config, mesh.shape[MODEL])

    def place(array, sharding):
        current = getattr(array, "sharding", None)
        if isinstance(current, NamedSharding) and current.mesh == mesh:
            return array
        return jax.device_put(array, sharding)

    return graphdef, jax.tree.map(place, state, tree_shardings(state, specs, module.shapes(module.config), mesh))


def to_host(array) -> np.ndarray:
    """The whole value of a (possibly sharded) array as numpy, on every process: gathered from the other hosts
    when some of its shards live there (multi-host), else read directly."""
    if getattr(array, "is_fully_addressable", True) or array.is_fully_replicated:
        return np.asarray(array)
    return np.asarray(multihost_utils.process_allgather(array, tiled=True))


def is_writer() -> bool:
    """True in the one process that writes result files (process 0; the only one without `--distributed`)."""
    return jax.process_index() == 0
