"""Device meshes, and where arrays live on them: one set of rules maps logical axes to mesh axes.

A mesh has two axes, `data` (prompt rows, training rows) and `model`. Parameters and the activations that matter
name their axes logically (`jaxheads.models.params`: `layers`, `vocab`, `embed`, `heads`, `kv_heads`,
`head_dim`, `mlp`; activations: `batch`, `length`, `act_embed`, `act_heads`, `act_kv_heads`, `act_vocab`,
`saved_embed` (the hidden axis of the saved layer inputs of a scan)). A scan's chunk of ablations is split over
`data` by `vmap`'s `spmd_axis_name` when its prompt rows do not fill that axis (`scan.ablated_pass`).
`RULES` maps each logical axis to `data`, `model`, `model_kv` or nothing (replicated), as MaxText's
`logical_axis_rules`; the presets are

- `tp`: tensor parallel. Query heads, KV heads, MLP width and the vocabulary (embedding, LM head, logits: the
  log-softmax and KL are computed on vocabulary shards) are split over `model`; rows over `data`.
- `fsdp`: parameters split over `data` on their hidden axis and gathered layer by layer inside the layer loop;
  rows over `data`; nothing over `model` (use a mesh `N,1`).
- `tp_fsdp`: both: the model-parallel splits of `tp` and the hidden axis of every parameter over `data`.

`model_kv` is the part of the model axis that KV heads split over: all of it when the KV heads divide by it, else
the largest divisor of both (a model axis of 16 with 8 KV heads: KV heads over 8, and the query heads of each KV
group over the remaining 2, the query-group split). A `Layout` is a mesh, rules and the model's KV head count;
it gives each array its `NamedSharding` and puts `with_sharding_constraint` on activations by logical name. An
axis that a mesh axis does not divide stays whole on that axis.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import jax
import numpy as np
from jax.experimental import mesh_utils, multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from jaxheads.errors import JaxheadsError

DATA, MODEL = "data", "model"
MODEL_Q = "model_q"  # the query-group part of the model axis, in a layout whose KV heads do not divide it
TARGETS = ("data", "model", "model_kv", "none")

_TP = (("batch", "data"), ("vocab", "model"), ("heads", "model"), ("kv_heads", "model_kv"), ("mlp", "model"),
       ("act_heads", "model"), ("act_kv_heads", "model_kv"), ("act_vocab", "model"), ("saved_embed", "model"))
RULES = {
    "tp": _TP,
    "fsdp": (("batch", "data"), ("embed", "data")),
    "tp_fsdp": _TP + (("embed", "data"),),
}
DEFAULT_RULES = "tp"


def parse_rules(text: str) -> tuple[tuple[str, str], ...]:
    """The rules of a `--sharding` flag: a preset name (tp, fsdp, tp_fsdp; empty = tp), optionally followed by
    `+AXIS=TARGET` changes, e.g. `tp+embed=data` (TARGET: data, model, model_kv or none)."""
    preset, *changes = (text or DEFAULT_RULES).split("+")
    if preset not in RULES:
        raise JaxheadsError(f"--sharding wants a preset ({', '.join(RULES)}) optionally followed by +AXIS=TARGET "
                            f"changes, such as tp+embed=data; got {text!r}")
    rules = dict(RULES[preset])
    for change in changes:
        axis, _, target = change.partition("=")
        if not axis or target not in TARGETS:
            raise JaxheadsError(f"--sharding: cannot read {change!r}; a change is AXIS=TARGET with TARGET one of "
                                f"{', '.join(TARGETS)}, e.g. tp+embed=data")
        rules[axis.strip()] = target
    return tuple((axis, target) for axis, target in rules.items() if target != "none")


def rules_text(rules: tuple[tuple[str, str], ...]) -> str:
    """A `--sharding` text that `parse_rules` reads back as `rules`: the preset they are, or `tp` with changes."""
    for name, preset in RULES.items():
        if dict(preset) == dict(rules):
            return name
    base, wanted = dict(RULES[DEFAULT_RULES]), dict(rules)
    changes = [f"{axis}={wanted.get(axis, 'none')}" for axis in {**base, **wanted} if base.get(axis) != wanted.get(axis)]
    return "+".join([DEFAULT_RULES, *changes])


def make_mesh(data: int = -1, model: int = 1, devices=None) -> Mesh:
    """A `(data, model)` mesh over `devices` (default: every device of every process); -1 for `data` takes the
    devices the `model` axis leaves. Over several TPU slices (devices with different `slice_index`) the data axis
    spans the slices and the model axis stays inside each one."""
    devices = jax.devices() if devices is None else list(devices)
    if model < 1 or len(devices) % model:
        raise JaxheadsError(f"the model axis ({model}) must be at least 1 and divide the {len(devices)} devices")
    data = len(devices) // model if data == -1 else data
    if data < 1 or data * model > len(devices):
        raise JaxheadsError(f"a {data} x {model} mesh needs {data * model} devices; {len(devices)} are visible")
    devices = devices[:data * model]
    axis_types = (AxisType.Auto, AxisType.Auto)
    slices = len({getattr(device, "slice_index", 0) for device in devices})
    if slices > 1:  # TPU slices joined over the data-center network: only the data axis crosses them
        if data % slices:
            raise JaxheadsError(f"the data axis ({data}) must be a multiple of the {slices} TPU slices")
        grid = mesh_utils.create_hybrid_device_mesh((data // slices, model), (slices, 1), devices=devices,
                                                    allow_split_physical_axes=True)
        return Mesh(np.asarray(grid), (DATA, MODEL), axis_types=axis_types)
    if devices[0].platform == "tpu" and len(devices) > 1:  # along the torus, also where an axis splits a physical one
        grid = mesh_utils.create_device_mesh((data, model), devices=devices, allow_split_physical_axes=True)
        return Mesh(np.asarray(grid), (DATA, MODEL), axis_types=axis_types)
    return jax.make_mesh((data, model), (DATA, MODEL), axis_types, devices=devices)


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


def kv_split(model: int, kv_heads: int | None) -> int:
    """The part of a model axis of size `model` that `kv_heads` KV heads split over (the rest splits each KV
    group's query heads)."""
    return model if not kv_heads or kv_heads % model == 0 else math.gcd(model, kv_heads)


def mesh_sizes(data: int, model: int, kv_heads: int | None = None) -> dict[str, int]:
    """The axis sizes of the mesh arrays are laid out on, for a `data x model` mesh and a model with `kv_heads`
    KV heads: `model` is the KV-head part and `model_q` (when there is one) the query-group part."""
    kv = kv_split(model, kv_heads)
    return {DATA: data, MODEL: kv, **({MODEL_Q: model // kv} if kv < model else {})}


def resolve_spec(axes: tuple[str | None, ...], shape: tuple[int, ...], rules: Mapping[str, str],
                 sizes: Mapping[str, int]) -> PartitionSpec:
    """The PartitionSpec of an array with logical `axes` and `shape` on a mesh of axis `sizes` (names `data`,
    `model` and, when the model axis is split for KV heads, `model_q`): each logical axis goes to its rule's
    mesh axes where they divide it and are not used by an earlier axis; otherwise it stays whole."""
    targets = {"data": (DATA,), "model": (MODEL, MODEL_Q) if MODEL_Q in sizes else (MODEL,), "model_kv": (MODEL,)}
    used: set[str] = set()
    spec = []
    for axis, size in zip(axes, shape):
        names = tuple(name for name in targets.get(rules.get(axis, "none"), ()) if sizes.get(name, 1) > 1)
        split = math.prod(sizes[name] for name in names)
        if not names or used & set(names) or size % split:
            spec.append(None)
            continue
        used |= set(names)
        spec.append(names[0] if len(names) == 1 else names)
    while spec and spec[-1] is None:
        spec.pop()
    return PartitionSpec(*spec)


def split_of(spec: PartitionSpec, sizes: Mapping[str, int]) -> int:
    """How many ways an array with `spec` is split on a mesh of axis `sizes` (its bytes per device are its
    bytes divided by this)."""
    names = [name for entry in spec if entry is not None for name in ((entry,) if isinstance(entry, str) else entry)]
    return math.prod(sizes[name] for name in names)


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where a model's arrays live: a `(data, model)` mesh, sharding rules (logical axis -> target), and the
    model's KV head count (for the KV/query-group split of the model axis). Hashable, so a model module holds it
    as a static attribute and jitted code constrains activations by it."""

    mesh: Mesh
    rules: tuple[tuple[str, str], ...] = RULES[DEFAULT_RULES]
    kv_heads: int | None = None

    @property
    def sizes(self) -> dict[str, int]:
        """The axis sizes of `array_mesh`."""
        return dict(self.array_mesh.shape)

    @property
    def array_mesh(self) -> Mesh:
        """The mesh arrays are laid out on: `mesh` itself, or the same devices with the model axis split into
        `model` (KV heads) x `model_q` (query groups) when the KV heads do not divide the model axis."""
        model = self.mesh.shape[MODEL]
        kv = kv_split(model, self.kv_heads)
        if kv == model:
            return self.mesh
        devices = self.mesh.devices.reshape(self.mesh.shape[DATA], kv, model // kv)
        return Mesh(devices, (DATA, MODEL, MODEL_Q), axis_types=(AxisType.Auto,) * 3)

    def with_rules(self, **changes: str | None) -> Layout:
        """This layout with some rules changed (a target of None: replicated)."""
        rules = {**dict(self.rules), **changes}
        return dataclasses.replace(self, rules=tuple((k, v) for k, v in rules.items() if v not in (None, "none")))

    def spec(self, axes: tuple[str | None, ...], shape: tuple[int, ...]) -> PartitionSpec:
        return resolve_spec(axes, shape, dict(self.rules), self.sizes)

    def sharding(self, axes: tuple[str | None, ...], shape: tuple[int, ...]) -> NamedSharding:
        return NamedSharding(self.array_mesh, self.spec(axes, shape))

    def constrain(self, array: jax.Array, axes: tuple[str | None, ...]) -> jax.Array:
        """`array` constrained to the layout of its logical `axes` (one per dimension)."""
        return jax.lax.with_sharding_constraint(array, self.sharding(axes, array.shape))

    @property
    def fsdp(self) -> bool:
        """Whether parameters are split over `data` (and so gathered layer by layer)."""
        return any(target == "data" and axis in PARAMETER_AXES for axis, target in self.rules)

    def gathered(self, array: jax.Array, axes: tuple[str, ...]) -> jax.Array:
        """One layer's slice of a parameter (`axes` without `layers`) constrained to its layout without the `data`
        split: inside the layer loop this all-gathers the layer's weights over `data` (FSDP)."""
        rules = {axis: target for axis, target in self.rules if not (target == "data" and axis in PARAMETER_AXES)}
        return jax.lax.with_sharding_constraint(
            array, NamedSharding(self.array_mesh, resolve_spec(axes, array.shape, rules, self.sizes)))

    def parameter_shardings(self, axes: Mapping[str, tuple[str, ...]],
                            shapes: Mapping[str, tuple[int, ...]]) -> dict[str, NamedSharding]:
        """The `NamedSharding` of every parameter (name -> logical axes, shapes)."""
        return {name: self.sharding(axes[name], shapes[name]) for name in shapes}


PARAMETER_AXES = ("layers", "vocab", "embed", "heads", "kv_heads", "head_dim", "mlp")


def constrain(layout: Layout | None, array: jax.Array, axes: tuple[str | None, ...]) -> jax.Array:
    """`layout.constrain`, or `array` unchanged without a layout (a model on one device)."""
    return array if layout is None else layout.constrain(array, axes)


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


def tree_shardings(tree, shardings: Mapping[str, NamedSharding], shapes: Mapping[str, tuple[int, ...]], mesh: Mesh):
    """A `NamedSharding` for every array of `tree`: an array found under the key of a parameter `name` and of
    that parameter's shape takes `shardings[name]` (so parameters, gradients and optimizer moments share a
    layout); every other array (LoRA adapters, step counters, PRNG keys) is replicated on `mesh`."""
    def sharding(path, leaf):
        names = [key.key for key in path if isinstance(key, jax.tree_util.DictKey)]
        for name in reversed(names):
            if name in shardings and tuple(np.shape(leaf)) == tuple(shapes[name]):
                return shardings[name]
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree_util.tree_map_with_path(sharding, tree)


def to_host(array) -> np.ndarray:
    """The whole value of a (possibly sharded) array as numpy, on every process: gathered from the other hosts
    when some of its shards live there (multi-host), else read directly."""
    if getattr(array, "is_fully_addressable", True) or array.is_fully_replicated:
        return np.asarray(array)
    return np.asarray(multihost_utils.process_allgather(array, tiled=True))


def is_writer() -> bool:
    """True in the one process that writes result files (process 0; the only one without `--distributed`)."""
    return jax.process_index() == 0
