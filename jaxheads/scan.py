"""The batched ablation engine behind Ships and Sahara.

For each batch of prompts, one unablated pass keeps the input of every layer; an ablation whose first ablated
layer is l then runs only layers l..L-1 from that saved input (layers before l are unchanged by it). Ablations
are vmapped in chunks that share their first layer, and only the last prompt position is read out: the
next-token log-probabilities (for KL) and the final-norm hidden state (for dataset-level scores).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm import tqdm

from jaxheads import tokens
from jaxheads.attention import AttentionKernel
from jaxheads.errors import DataError
from jaxheads.interventions import Interventions
from jaxheads.loading import Model
from jaxheads.models.decoder import positions_from_mask, prompt_attention_mask
from jaxheads.placement import layout_for, split_on_mesh
from jaxheads.sharding import (
    DATA,
    MODEL,
    constrain,
    make_mesh,
    place_rows,
    replicate,
    resolve_spec,
    shard_rows,
    split_of,
    to_host,
)

DEFAULT_BATCH_SIZE = 16
AUTO_CHUNK = 0  # chunk size 0: as many ablations per device call as `MEMORY_SHARE` of the free memory holds
FALLBACK_CHUNK = 16  # where the device reports no memory statistics (CPU)
MAX_AUTO_CHUNK = 256
MEMORY_SHARE = 0.8  # of the free device memory, for a scan's activations (room for XLA's own and the estimate's error)


@dataclasses.dataclass
class PromptBatch:
    """Left-padded token ids and mask `[B, T]`; `indices[b]` is the prompt's position in the input list, or -1
    for a filler row (a copy of row 0 that keeps every batch the same size)."""

    ids: np.ndarray
    mask: np.ndarray
    indices: np.ndarray


def make_batches(model: Model, prompts: Sequence[str] | Sequence[Sequence[int]],
                 batch_size: int = DEFAULT_BATCH_SIZE, row_multiple: int | None = None) -> list[PromptBatch]:
    """Tokenizes formatted prompts (or takes token id lists) and groups them by length into batches of
    `batch_size`, rounded up to a multiple of `row_multiple` (default: the device count, so that rows split
    evenly over a data-parallel mesh); short batches are filled. Prompts longer than the model's context are
    rejected by name."""
    row_multiple = jax.device_count() if row_multiple is None else row_multiple
    batch_size = tokens.batch_size_for(batch_size, row_multiple)
    if not prompts:
        raise DataError("no prompts to scan")
    ids = [tokens.encode_prompt(model.tokenizer, text) if isinstance(text, str) else list(text) for text in prompts]
    too_long = [i for i, row in enumerate(ids) if len(row) > model.config.max_position_embeddings]
    if too_long:
        raise DataError(f"prompts {too_long[:10]} are longer than the model's context of "
                        f"{model.config.max_position_embeddings} tokens; shorten or drop them")
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    batches = []
    for start in range(0, len(order), batch_size):
        members = order[start:start + batch_size]
        rows = tokens.fill(members, tokens.batch_rows(len(members), len(order), batch_size, row_multiple))
        batch_ids, batch_mask = tokens.pad_left([ids[i] for i in rows], tokens.pad_id(model.tokenizer),
                                                tokens.PROMPT_PAD_MULTIPLE)
        indices = np.array(members + [-1] * (len(rows) - len(members)))
        batches.append(PromptBatch(batch_ids, batch_mask, indices))
    return batches


SAVED_INPUTS = ("layers", "batch", "length", "saved_embed")  # the logical axes of the saved layer inputs


def row_multiple(num_prompts: int, batch_size: int, mesh: Mesh) -> int:
    """What a scan's batches round their rows up to: the data axis, when there are enough prompts to fill it;
    else 1, and the scan splits its ablation chunks over the data axis instead (`chunk_on_data`)."""
    data = mesh.shape[DATA]
    return data if min(num_prompts, batch_size) >= data else 1


def chunk_on_data(rows: int, mesh: Mesh) -> bool:
    """Whether a scan splits its ablation chunks over the mesh's `data` axis instead of its prompt rows: when a
    batch's rows do not fill that axis (fewer prompts than data devices)."""
    return rows % mesh.shape[DATA] != 0


@functools.partial(jax.jit, static_argnames="graphdef")
def base_pass(graphdef, state, ids, mask):
    """Unablated pass: every layer's input `[L, B, T, D]` (laid out by `SAVED_INPUTS`: on a mesh, rows over
    `data` and the hidden axis over `model`), last-position log-probs `[B, V]` and final-norm hidden state `[B, D]`
    (float32)."""
    model = nnx.merge(graphdef, state)
    out = model.run_layers(model.embed_tokens(ids), positions_from_mask(mask),
                           prompt_attention_mask(model.config, mask), collect_inputs=True)
    last = model.final_hidden(out.h[:, -1])
    inputs = constrain(model.layout, out.inputs, SAVED_INPUTS)
    return inputs, jax.nn.log_softmax(model.logits(last), axis=-1), last.astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("graphdef", "chunk_axis"))
def ablated_pass(graphdef, state, layer_inputs, mask, start, heads: Interventions, base_logp,
                 chunk_axis: str | None = None):
    """Runs a chunk of ablations `[C, L, N]` that leave layers < `start` untouched, from `layer_inputs[start]`.

    Returns KL(p_base || p_ablated) at the last position `[C, B]` and the final-norm hidden states `[C, B, D]`,
    both float32. With `chunk_axis` (`data`) the chunk's ablations are split over that mesh axis (`vmap`'s
    `spmd_axis_name`), for batches whose rows do not fill it.
    """
    model = nnx.merge(graphdef, state)
    positions = positions_from_mask(mask)
    attn_mask = prompt_attention_mask(model.config, mask)  # compact: no [B, T, T] array
    h0 = jax.lax.dynamic_index_in_dim(layer_inputs, start, keepdims=False)

    def one(ablation):
        h = model.run_layers(h0, positions, attn_mask, ablation, start=start).h
        last = model.final_hidden(h[:, -1])
        logp = jax.nn.log_softmax(model.logits(last), axis=-1)
        kl = jnp.sum(jnp.exp(base_logp) * (base_logp - logp), axis=-1)
        return kl, last.astype(jnp.float32)

    return jax.vmap(one, spmd_axis_name=chunk_axis)(heads)


def first_ablated_layer(ablations: Interventions) -> np.ndarray:
    """For a batch `[M, L, N]`, the first layer each ablation changes (L if it changes nothing)."""
    changed = np.asarray(ablations.q_scale) != 1
    changed |= np.asarray(ablations.out_scale) != 1
    if ablations.mean_mix is not None:
        changed |= np.asarray(ablations.mean_mix) != 0
    per_layer = changed.any(axis=-1)
    num_layers = per_layer.shape[-1]
    return np.where(per_layer.any(axis=-1), per_layer.argmax(axis=-1), num_layers)


@dataclasses.dataclass
class Chunk:
    """Ablations `[C, L, N]` that share their first ablated layer `start`; `rows` are their indices in the
    full list (a short chunk is filled with copies of its first row, whose results are dropped)."""

    start: int
    heads: Interventions
    rows: np.ndarray


def ablation_splits(config, rules: Mapping[str, str], sizes: Mapping[str, int]) -> dict[str, int]:
    """How many ways sharding `rules` on a mesh of axis `sizes` (`Layout.rules`, `Layout.sizes`) split what a scan
    holds per device: the query heads (`heads`), MLP width (`mlp`) and vocabulary (`vocab`) of one ablation's
    activations, and the hidden axis of the saved layer inputs (`saved_embed`)."""
    return {axis: split_of(resolve_spec((axis,), (size,), rules, sizes), sizes)
            for axis, size in (("heads", config.num_heads), ("mlp", config.intermediate_size),
                               ("vocab", config.vocab_size), ("saved_embed", config.hidden_size))}


def ablation_bytes(config, rows: int, tokens: int, itemsize: int, kernel: AttentionKernel = AttentionKernel(),
                   splits: dict[str, int] | None = None) -> int:
    """Estimated peak activation bytes of one ablation on `rows` prompts of `tokens` tokens (one device's share
    of the rows; `splits` the layout's `ablation_splits`), calibrated against XLA's compiled peaks
    (docs/scaling.md): per token the residual stream and the MLP's gate, up and product (`D + 3F / split`) in the
    model dtype; the attention's working memory, which XLA fuses down to one float32 copy of the logits
    `[rows, N, T, S]` on the dense kernel and to one tile of them and the running statistics of one query block on
    the blocked one (no T x S term); and the float32 vocabulary rows of the last position
    (logits, log-probs, KL terms)."""
    splits = splits or {}
    heads = -(-config.num_heads // splits.get("heads", 1))
    per_token = config.hidden_size + 3 * config.intermediate_size // splits.get("mlp", 1)
    if kernel.blocked(tokens, tokens):
        block_q, block_k = min(kernel.block_q, tokens), min(kernel.block_k, tokens)
        attention = rows * heads * block_q * (block_k + config.head_dim + 2) * 4
    else:
        attention = rows * heads * tokens * tokens * 4
    vocab = 3 * rows * (config.vocab_size // splits.get("vocab", 1)) * 4
    return rows * tokens * per_token * itemsize + attention + vocab


def free_device_bytes(device) -> int | None:
    """`bytes_limit - bytes_in_use` of a device, or None where it reports no memory statistics (CPU)."""
    stats = device.memory_stats()
    if not stats or "bytes_limit" not in stats:
        return None
    return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))


def saved_input_bytes(config, rows: int, tokens: int, itemsize: int, splits: dict[str, int] | None = None) -> int:
    """Bytes per device of a batch's saved layer inputs `[L, rows, T, D]` (D split `splits["saved_embed"]` ways)."""
    split = (splits or {}).get("saved_embed", 1)
    return config.num_layers * rows * tokens * (config.hidden_size // split) * itemsize


def auto_chunk_size(config, rows: int, tokens: int, itemsize: int, device,
                    kernel: AttentionKernel = AttentionKernel(), splits: dict[str, int] | None = None,
                    representation_bytes: int = 0) -> int:
    """Ablations per device call whose activations (`ablation_bytes` each) fit in `MEMORY_SHARE` of `device`'s
    free memory beside the saved layer inputs and `representation_bytes`, between 1 and `MAX_AUTO_CHUNK`;
    `FALLBACK_CHUNK` when the device reports no memory."""
    free = free_device_bytes(device)
    if free is None:
        return FALLBACK_CHUNK
    room = int(free * MEMORY_SHARE) - saved_input_bytes(config, rows, tokens, itemsize, splits) - representation_bytes
    fitting = room // ablation_bytes(config, rows, tokens, itemsize, kernel, splits)
    return int(np.clip(fitting, 1, MAX_AUTO_CHUNK))


def check_memory(config, rows: int, tokens: int, itemsize: int, chunk_size: int, device,
                 kernel: AttentionKernel = AttentionKernel(), representation_bytes: int = 0,
                 splits: dict[str, int] | None = None) -> None:
    """Stops a scan whose estimate exceeds `device`'s free memory before it starts, saying by how much and which
    chunk size would fit: the saved layer inputs (`saved_input_bytes`), `chunk_size` ablations' activations
    (`ablation_bytes` each) and `representation_bytes` (dataset-level scores). Nothing is checked on devices that
    report no memory statistics (CPU)."""
    free = free_device_bytes(device)
    if free is None:
        return
    per_ablation = ablation_bytes(config, rows, tokens, itemsize, kernel, splits)
    fixed = saved_input_bytes(config, rows, tokens, itemsize, splits) + representation_bytes
    need = fixed + chunk_size * per_ablation
    if need <= free:
        return
    fits = (free - fixed) // per_ablation if free > fixed else 0
    advice = (f"--chunk_size={int(min(fits, MAX_AUTO_CHUNK))} fits" if fits else
              "not even one ablation fits: use fewer prompts per batch (--batch_size), more devices on the mesh's "
              "data or model axis, or shorter prompts")
    gib = 2 ** 30
    raise DataError(f"this scan needs about {need / gib:.2f} GiB on {device} ({rows} prompt rows of {tokens} tokens, "
                    f"chunks of {chunk_size} ablations) but {free / gib:.2f} GiB are free, "
                    f"{(need - free) / gib:.2f} GiB short; {advice} (jaxheads plan estimates it from the config)")


def make_chunks(ablations: Interventions, chunk_size: int = FALLBACK_CHUNK, multiple: int = 1) -> list[Chunk]:
    """Groups a batch of ablations `[M, L, N]` by first ablated layer into chunks of `chunk_size`, every chunk's
    length a multiple of `multiple` (the data axis that splits them, in a scan whose rows do not fill it)."""
    chunk_size = tokens.round_up(chunk_size, multiple)
    starts = first_ablated_layer(ablations)
    num_layers = ablations.q_scale.shape[-2]
    if (starts == num_layers).any():
        raise DataError(f"ablations {np.flatnonzero(starts == num_layers).tolist()} change no head")
    chunks = []
    for start in np.unique(starts):
        members = np.flatnonzero(starts == start)
        for offset in range(0, len(members), chunk_size):
            rows = members[offset:offset + chunk_size]
            width = chunk_size if len(members) > chunk_size else tokens.round_up(len(rows), multiple)
            padded = np.r_[rows, np.full(width - len(rows), rows[0])]
            heads = jax.tree.map(lambda a: jnp.asarray(np.asarray(a)[padded]), ablations)
            chunks.append(Chunk(int(start), heads, rows))
    return chunks


@dataclasses.dataclass
class ScanResult:
    """Per ablation and prompt: KL `[M, P]`; with `keep_gram`, the Gram matrices `M Mᵀ` (float64) of the
    final-norm last-position representations `M: [P, D]`, unablated `[P, P]` and per ablation `[M, P, P]`."""

    kl: np.ndarray
    base_gram: np.ndarray | None = None
    gram: np.ndarray | None = None


def scan_ablations(model: Model, batches: Sequence[PromptBatch], ablations: Interventions,
                   chunk_size: int = AUTO_CHUNK, keep_gram: bool = False, progress: bool = False,
                   mesh: Mesh | None = None) -> ScanResult:
    """Runs every ablation `[M, L, N]` on every prompt (exactly what one forward pass per ablation would give at
    the last position), reusing each batch's unablated prefix, `chunk_size` ablations per device call (0 = from
    free device memory, `auto_chunk_size`).

    On `mesh` (default: every device data-parallel) prompt rows are split over `data` and parameters by the
    model's layout (`jaxheads.placement.layout_for`); when a batch's rows do not fill the data axis
    (`chunk_on_data`), each chunk's ablations are split over it instead and the rows replicated. Representations
    stay on the devices, their hidden axis split over `model` (where it divides), and only their `[P, P]` Gram
    matrices come back."""
    mesh = make_mesh() if mesh is None else mesh
    graphdef, state = split_on_mesh(model.module, mesh)
    batch_rows = max(batch.ids.shape[0] for batch in batches)
    on_data = chunk_on_data(batch_rows, mesh) or any(chunk_on_data(batch.ids.shape[0], mesh) for batch in batches)
    data = mesh.shape[DATA]
    rows = batch_rows if on_data else batch_rows // data
    length = max(batch.ids.shape[1] for batch in batches)
    itemsize, device, kernel = model.module.embed[...].dtype.itemsize, mesh.local_devices[0], model.module.attention_kernel
    num_prompts = sum(int((b.indices >= 0).sum()) for b in batches)
    representation_bytes = 0
    if keep_gram:
        split = mesh.shape[MODEL] if model.config.hidden_size % mesh.shape[MODEL] == 0 else 1
        representation_bytes = (ablations.q_scale.shape[0] + 1) * num_prompts * model.config.hidden_size * 4 // split
    layout = layout_for(model.module, mesh)
    splits = ablation_splits(model.config, dict(layout.rules), layout.sizes)
    if chunk_size == AUTO_CHUNK:
        chunk_size = auto_chunk_size(model.config, rows, length, itemsize, device, kernel, splits,
                                     representation_bytes) * (data if on_data else 1)
    check_memory(model.config, rows, length, itemsize, -(-chunk_size // data) if on_data else chunk_size, device,
                 kernel, representation_bytes, splits)
    place = place_rows if on_data else replicate
    chunks = [dataclasses.replace(chunk, heads=place(chunk.heads, mesh))
              for chunk in make_chunks(ablations, chunk_size, data if on_data else 1)]
    num_ablations = ablations.q_scale.shape[0]
    kl = np.zeros((num_ablations, num_prompts), np.float32)
    if keep_gram:
        hidden = representation_zeros((num_ablations, num_prompts, model.config.hidden_size), mesh)
        base_hidden = representation_zeros((num_prompts, model.config.hidden_size), mesh)
    for batch, outputs in _iterate(graphdef, state, mesh, batches, chunks, progress, on_data):
        real = batch.indices >= 0
        columns = batch.indices[real]
        base, per_chunk = outputs
        for chunk, (chunk_kl, chunk_hidden) in zip(chunks, per_chunk):
            count = len(chunk.rows)
            if keep_gram:
                hidden = _store(hidden, jnp.asarray(chunk.rows), jnp.asarray(columns), chunk_hidden[:count][:, real])
            kl[np.ix_(chunk.rows, columns)] = to_host(chunk_kl)[:count][:, real]
        if keep_gram:
            base_hidden = _store(base_hidden, None, jnp.asarray(columns), base[real])
    if not keep_gram:
        return ScanResult(kl)
    return ScanResult(kl, to_host(gram_matrices(base_hidden)).astype(np.float64),
                      to_host(gram_matrices(hidden)).astype(np.float64))


def representation_zeros(shape: tuple[int, ...], mesh: Mesh) -> jax.Array:
    """float32 zeros `[..., P, D]` made on the devices of `mesh` with D split over `model` where it divides (the
    representations of every candidate on every prompt are the largest array of a dataset-level scan)."""
    split = shape[-1] % mesh.shape[MODEL] == 0 and mesh.shape[MODEL] > 1
    spec = PartitionSpec(*([None] * (len(shape) - 1)), MODEL if split else None)
    return jax.jit(lambda: jnp.zeros(shape, jnp.float32), out_shardings=NamedSharding(mesh, spec))()


@functools.partial(jax.jit, donate_argnums=0)
def _store(representations: jax.Array, rows: jax.Array | None, columns: jax.Array, values: jax.Array) -> jax.Array:
    """`representations` with `values` written at `[rows][:, columns]` (or `[columns]` when `rows` is None), in
    place (the old buffer is donated, so no second copy of the whole array is made)."""
    if rows is None:
        return representations.at[columns].set(values.astype(representations.dtype))
    return representations.at[rows[:, None], columns[None, :]].set(values.astype(representations.dtype))


@jax.jit
def gram_matrices(representations: jax.Array) -> jax.Array:
    """`M Mᵀ` `[..., P, P]` of representation matrices `[..., P, D]`, float32 at full matmul precision."""
    return jnp.einsum("...pd,...qd->...pq", representations, representations, precision=jax.lax.Precision.HIGHEST)


def _iterate(graphdef, state, mesh, batches, chunks, progress, on_data: bool = False) -> Iterator:
    """Dispatches all of a batch's chunks before reading any result back, so the device never waits on the host;
    `on_data`: the chunks are split over `data` and the rows replicated."""
    bar = None
    if progress:
        bar = tqdm(total=len(batches) * len(chunks), desc="ablation chunks", unit="chunk", leave=False)
    for batch in batches:
        rows = replicate if on_data else shard_rows
        mask = rows(batch.mask, mesh)
        inputs, base_logp, base_hidden = base_pass(graphdef, state, rows(batch.ids, mesh), mask)
        per_chunk = []
        for chunk in chunks:
            per_chunk.append(ablated_pass(graphdef, state, inputs, mask, jnp.int32(chunk.start), chunk.heads,
                                          base_logp, chunk_axis=DATA if on_data else None))
            if bar is not None:  # dispatch is asynchronous: wait only when a bar must show real progress
                jax.block_until_ready(per_chunk[-1])
                bar.update()
        yield batch, (base_hidden, per_chunk)
    if bar is not None:
        bar.close()
