"""A model's place on a mesh: its `Layout` (mesh, sharding rules, KV heads), the sharding of each parameter,
which parameters a mesh axis does not divide, and a loaded model moved onto a mesh."""

from __future__ import annotations

import dataclasses

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from jaxheads.errors import LoadError
from jaxheads.models import params as param_table
from jaxheads.models.config import ModelConfig
from jaxheads.sharding import DATA, MODEL, Layout, mesh_sizes, parse_rules, resolve_spec, tree_shardings

# What a parameter axis counts (for the notice of parameters a mesh axis does not divide).
AXIS_KINDS = {"heads": "query heads", "kv_heads": "KV heads", "mlp": "MLP width", "vocab": "vocabulary rows",
              "embed": "hidden size"}


def model_layout(cfg: ModelConfig, mesh: Mesh, sharding: str | tuple | None = None) -> Layout:
    """The layout of a model of `cfg` on a `(data, model)` mesh under sharding rules (a `--sharding` text such as
    "tp" or "tp_fsdp", parsed rules, or None for tensor parallel)."""
    if set(mesh.axis_names) != {DATA, MODEL}:
        raise LoadError(f"a model loads onto a mesh with axes ({DATA!r}, {MODEL!r}) (jaxheads.sharding.make_mesh); "
                        f"this one has {tuple(mesh.axis_names)}")
    rules = sharding if isinstance(sharding, tuple) else parse_rules(sharding or "")
    return Layout(mesh, rules, cfg.num_kv_heads)


def parameter_shardings(cfg: ModelConfig, layout: Layout) -> dict[str, NamedSharding]:
    """The `NamedSharding` of every parameter of `cfg` in `layout`."""
    return layout.parameter_shardings(param_table.logical_axes(cfg), param_table.shapes(cfg))


def replicated_notice(cfg: ModelConfig, data: int, model: int, sharding: str | tuple | None = None) -> str | None:
    """Which parameters the sharding rules would split on an axis that a `data x model` mesh does not divide, so
    that they stay whole on it (e.g. "q, o: 6 query heads do not divide over a model axis of 4; replicated");
    None when every rule applies."""
    rules = dict(sharding if isinstance(sharding, tuple) else parse_rules(sharding or ""))
    sizes = mesh_sizes(data, model, cfg.num_kv_heads)
    widths = {"data": data, "model": model, "model_kv": sizes[MODEL]}
    groups: dict[tuple[str, int, str, int], list[str]] = {}
    for name, axes in param_table.logical_axes(cfg).items():
        shape = param_table.shapes(cfg)[name]
        spec = tuple(resolve_spec(axes, shape, rules, sizes))
        for axis, size, entry in zip(axes, shape, spec + (None,) * (len(axes) - len(spec))):
            width = widths.get(rules.get(axis), 1)
            if entry is None and width > 1 and axis in AXIS_KINDS:
                target = "data" if rules[axis] == "data" else "model"
                groups.setdefault((AXIS_KINDS[axis], size, target, width), []).append(name)
    if not groups:
        return None
    parts = []
    for (kind, size, target, width), names in groups.items():
        what = f"an MLP width of {size} does" if kind == "MLP width" else f"{size} {kind} do"
        parts.append(f"{', '.join(names)}: {what} not divide over a {target} axis of {width}; replicated")
    return "; ".join(parts)


def layout_for(module, mesh: Mesh, sharding: str | tuple | None = None) -> Layout:
    """The layout a module runs in on `mesh`: the one it holds when it is on that mesh (and no other rules are
    asked for), else `sharding`'s (tensor parallel by default)."""
    held = module.layout
    if held is not None and held.mesh == mesh and sharding is None:
        return held
    return model_layout(module.config, mesh, sharding)


def split_on_mesh(module, mesh: Mesh, sharding: str | tuple | None = None):
    """`nnx.split` of a model module with its parameters placed by `layout_for(module, mesh, sharding)`, which the
    returned graph holds: `(graphdef, state)`. An array already where the layout puts it stays where it is."""
    layout = layout_for(module, mesh, sharding)
    graphdef, state = nnx.split(module)
    if module.layout != layout:
        moved = nnx.merge(graphdef, state)
        moved.layout = layout
        graphdef, state = nnx.split(moved)
    cfg = module.config
    shardings = parameter_shardings(cfg, layout)

    def place(array, sharding):
        current = getattr(array, "sharding", None)
        if isinstance(current, NamedSharding) and current.is_equivalent_to(sharding, array.ndim):
            return array
        return jax.device_put(array, sharding)

    return graphdef, jax.tree.map(place, state, tree_shardings(state, shardings, param_table.shapes(cfg),
                                                               layout.array_mesh))


def model_on_mesh(model, mesh: Mesh, sharding: str | tuple | None = None):
    """`model` with its parameters placed by its layout on `mesh` (placing them again in the same layout is then
    free, so a search of many scans moves the weights once)."""
    return dataclasses.replace(model, module=nnx.merge(*split_on_mesh(model.module, mesh, sharding)))
