"""`jaxheads patterns`: where chosen heads look. For each head, the attention of the last prompt position (the
position that predicts the first response token) over the prompt's tokens, on harmful and on harmless prompts:
a plot of one example per set with the token strings on the axis, and per set the tokens that receive the most
of that attention summed over its prompts. Writes patterns.json and patterns.png."""

from __future__ import annotations

import collections
import os

import numpy as np

from jaxheads import io, plots
from jaxheads.errors import JaxheadsError
from jaxheads.interventions import check_heads, parse_heads
from jaxheads.jobs import common
from jaxheads.jobs.heads import read_head_file
from jaxheads.patterns import attention_patterns
from jaxheads.sharding import to_host
from jaxheads.tokens import pad_id, pad_left
from jaxheads.weights.digest import file_digest

SETS = ("harmful", "harmless")
TOP_TOKENS = 10


def check_config(config) -> None:
    common.check_model_settings(config)
    common.check_prompt_settings(config)
    common.require_int(config, "top", "batch_size")
    common.require_int(config, "example", minimum=0)
    parse_heads(config.heads)
    if bool(config.heads) == bool(config.heads_from):
        raise JaxheadsError("give the heads either as --heads=l:n,... or as --heads_from=ships.json|sahara.json")


def chosen_heads(config) -> list[tuple[int, int]]:
    """The heads of `--heads`, or those of a result file: a sahara.json's chosen heads, or a ships.json's `top`
    highest-ranked heads (by the specificity-adjusted score when it has one)."""
    if config.heads:
        return parse_heads(config.heads)
    result = io.read_json(config.heads_from)
    if "heads" in result:  # a sahara.json (or any file naming its chosen heads)
        return [tuple(head) for head in result["heads"]][:config.top]
    scores = result.get("specific") or result.get("mean") or result.get("scores")
    table = np.array(scores if scores is not None else [], float)
    if table.ndim != 2:
        raise JaxheadsError(f"{config.heads_from} holds no [layer, head] score table")
    order = np.argsort(-table, axis=None, kind="stable")[:config.top]
    return [tuple(int(i) for i in np.unravel_index(flat, table.shape)) for flat in order]


def token_strings(tokenizer, ids) -> list[str]:
    """Each token id decoded on its own, with whitespace made visible (for axis labels)."""
    return [tokenizer.decode([int(token)]).replace("\n", "\\n") or repr(int(token)) for token in ids]


def last_position_attention(model, data, heads, batch_size: int, mesh=None) -> list[dict]:
    """Per prompt of `data`: its token strings and the last position's attention over them, `[heads, tokens]`."""
    layers = sorted({layer for layer, _ in heads})
    rows = [(layers.index(layer), head) for layer, head in heads]
    found = []
    for start in range(0, len(data), batch_size):
        chunk = data.ids[start:start + batch_size]
        ids, mask = pad_left(chunk, pad_id(model.tokenizer))
        patterns = to_host(attention_patterns(model, ids, mask, layers=layers, mesh=mesh))  # [B, L', N, T, T]
        for b, prompt_ids in enumerate(chunk):
            last = patterns[b, :, :, -1, ids.shape[1] - len(prompt_ids):]  # real keys only (left padding)
            found.append({"tokens": token_strings(model.tokenizer, prompt_ids),
                          "attention": np.stack([last[layer, head] for layer, head in rows])})
    return found


def top_tokens(prompts: list[dict], head: int) -> list[list]:
    """The tokens that receive the most of head `head`'s last-position attention over all prompts: `[token,
    mean attention per prompt]`, highest first."""
    mass = collections.Counter()
    for prompt in prompts:
        for token, weight in zip(prompt["tokens"], prompt["attention"][head]):
            mass[token] += float(weight)
    return [[token, total / len(prompts)] for token, total in mass.most_common(TOP_TOKENS)]


def run(config) -> dict:
    """Measures and plots the chosen heads' attention on both sets; returns the contents of patterns.json."""
    check_config(config)
    heads = chosen_heads(config)
    with io.RunFolder(config.out) as folder:
        model = common.load_model(config)
        if config.heads_from:
            read_head_file(config.heads_from, "heads_from", model)
        heads = check_heads(heads, model.config.num_layers, model.config.num_heads)
        sets = {name: common.load_prompt_set(model, config[name], config.prompt_format, limit=config.limit)
                for name in SETS}
        folder.check(common.fingerprint("patterns", config, {"model": model},
                                        {**sets, "heads": heads, "heads_from": config.heads_from and
                                         file_digest(config.heads_from)}))
        mesh = common.device_mesh(config)
        measured = {name: last_position_attention(model, data, heads, config.batch_size, mesh)
                    for name, data in sets.items()}
        for name, data in sets.items():
            common.require(config, "example", config.example < len(data),
                           f"below the number of prompts of each set ({len(data)} in {data.source})")
        output = {
            **common.shape_fields(model), "heads": [list(head) for head in heads],
            "sets": {name: {"source": config[name], "num_prompts": len(sets[name]),
                            "top_tokens": {f"{layer}:{head}": top_tokens(measured[name], i)
                                           for i, (layer, head) in enumerate(heads)},
                            "sink_share": [float(np.mean([p["attention"][i][0] for p in measured[name]]))
                                           for i in range(len(heads))],
                            "example": {"query": sets[name].queries[config.example],
                                        "tokens": measured[name][config.example]["tokens"],
                                        "attention": measured[name][config.example]["attention"].tolist()}}
                     for name in SETS},
            "axes": {"sets.*.example.attention": ["head", "token"], "sets.*.sink_share": ["head"]},
            "settings": config.to_dict(),
        }
        common.write_result(config.out, "patterns.json", output)
        plots.plot_last_position_attention(
            heads, {name: output["sets"][name]["example"] for name in SETS}, os.path.join(config.out, "patterns.png"),
            title=f"last-position attention of {model.name}: one {SETS[0]} and one {SETS[1]} prompt")
    for i, (layer, head) in enumerate(heads):
        for name in SETS:
            listed = ", ".join(f"{token!r} {share:.2f}" for token, share in
                               output["sets"][name]["top_tokens"][f"{layer}:{head}"][:5])
            print(f"head ({layer}, {head}) on {name} prompts: {listed}")
    print(f"wrote {config.out}/patterns.json and patterns.png")
    return output
