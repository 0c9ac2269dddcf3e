"""`jaxheads compare`: do runs on different models (say, two fine-tunes of one base) find the same safety heads?
Reads two or more ships.json or sahara.json files and writes compare.json and compare_heads.png: for each pair
of runs and each k, how many top-k heads they share, how many random choice would share, and the
hypergeometric p-value of sharing at least that many; and the Spearman correlation of their full score maps
(docs/methods.md §10)."""

from __future__ import annotations

import itertools
import math
import os

from jaxheads import compare, io, plots
from jaxheads.errors import DataError, JaxheadsError
from jaxheads.jobs import common
from jaxheads.weights.digest import file_digest

RANKING = "descending score; equal scores ordered by the lower flat index layer * num_heads + head"


def parse_runs(text: str) -> list[tuple[str | None, str]]:
    """'a.json,llama=b/ships.json' -> [(None, 'a.json'), ('llama', 'b/ships.json')]. An entry is `name=path` when
    it holds a '=' and is not itself an existing file."""
    entries = []
    for entry in (part.strip() for part in text.split(",")):
        if not entry:
            continue
        name, sep, path = entry.partition("=")
        if sep and not os.path.isfile(entry):
            if not name.strip() or not path.strip():
                raise JaxheadsError(f"--runs entry {entry!r} must be PATH or NAME=PATH with both parts given")
            entries.append((name.strip(), path.strip()))
        else:
            entries.append((None, entry))
    return entries


def parse_top_k(text: str) -> list[int]:
    """'5,10,20' -> [5, 10, 20] (given order, repeats dropped)."""
    try:
        ks = [int(part) for part in str(text).split(",") if part.strip()]
    except ValueError as error:
        raise JaxheadsError(f"--top_k must be comma-separated integers such as 5,10,20, got {text!r}") from error
    if not ks or min(ks) < 1:
        raise JaxheadsError(f"--top_k must be comma-separated integers >= 1 such as 5,10,20, got {text!r}")
    return list(dict.fromkeys(ks))


def check_config(config) -> None:
    common.require(config, "runs", len(parse_runs(config.runs)) >= 2,
                   "two or more result files, comma-separated: --runs=a/ships.json,b/ships.json")
    parse_top_k(config.top_k)
    common.require(config, "out", bool(config.out), "an output folder")


def labels(entries: list[tuple[str | None, str]]) -> list[str]:
    """Each run's label: its given name, else the name of the folder holding the file (the file's path when
    that is empty or two runs would share it). Two runs with one label are an error."""
    folders = [name or os.path.basename(os.path.dirname(os.path.abspath(path))) for name, path in entries]
    clash = {label for label in folders if folders.count(label) > 1}
    chosen = [label if name or (label and label not in clash) else path
              for (name, path), label in zip(entries, folders)]
    repeated = sorted({label for label in chosen if chosen.count(label) > 1})
    if repeated:
        raise JaxheadsError(f"--runs names two runs {', '.join(repeated)}; label them apart with NAME=PATH")
    return chosen


def load_run(label: str, path: str) -> dict:
    """The score map a result file ranks heads by, and what produced it: a ships.json gives its query-level mean
    (`mean`) or, for `settings.level == "dataset"`, its dataset-level `scores`; a sahara.json gives step 1's
    table (the dataset-level Ships of every single head)."""
    result = io.read_json(path)
    if not isinstance(result, dict):
        raise DataError(f"{path} is not a ships.json or sahara.json (it holds no JSON object)")
    settings = result.get("settings") or {}
    if "steps" in result:
        if not result["steps"]:
            raise DataError(f"{path} is a sahara.json without steps; rerun jaxheads sahara with --steps >= 1")
        kind, source, table = "sahara", "steps[0].scores", result["steps"][0].get("scores")
    elif settings.get("level", result.get("level")) == "dataset":
        kind, source, table = "ships (dataset level)", "scores", result.get("scores")
    elif "mean" in result:
        kind, source, table = "ships (query level)", "mean", result["mean"]
    else:
        raise DataError(f"{path} is neither a ships.json (no 'mean', and settings.level is not 'dataset') nor a "
                        "sahara.json (no 'steps')")
    if table is None:
        raise DataError(f"{path} has no '{source}' table")
    scores = compare.score_map(table, f"{path} ({source})")
    declared = (result.get("num_layers"), result.get("num_heads"))
    if None not in declared and tuple(declared) != scores.shape:
        raise DataError(f"{path} declares {declared[0]} layers x {declared[1]} heads but its '{source}' table has "
                        f"shape {scores.shape}")
    return {"label": label, "path": path, "kind": kind, "source": source, "model": result.get("model"),
            "dataset": result.get("dataset"), "ablation": settings.get("ablation"),
            "epsilon": settings.get("epsilon"), "scores": scores}


def run(config) -> dict:
    """Compares every pair of runs; returns the contents of compare.json."""
    check_config(config)
    entries = parse_runs(config.runs)
    ks = parse_top_k(config.top_k)
    runs = [load_run(label, path) for label, (_, path) in zip(labels(entries), entries)]
    shapes = {run_["scores"].shape for run_ in runs}
    if len(shapes) > 1:
        listed = "; ".join(f"{run_['path']}: {run_['scores'].shape[0]} layers x {run_['scores'].shape[1]} heads"
                           for run_ in runs)
        raise DataError(f"the runs have different shapes, so their heads cannot be matched: {listed}")
    num_layers, num_heads = runs[0]["scores"].shape
    skipped = [k for k in ks if k > num_layers * num_heads]
    ks = [k for k in ks if k not in skipped]
    if not ks:
        raise JaxheadsError(f"--top_k {', '.join(map(str, skipped))} exceeds the {num_layers * num_heads} heads "
                            f"({num_layers} layers x {num_heads} heads); give a k of at most "
                            f"{num_layers * num_heads}")
    if skipped:
        print(f"skipping --top_k {', '.join(map(str, skipped))}: more than the {num_layers * num_heads} heads "
              f"({num_layers} layers x {num_heads} heads)")
    pairs = []
    for a, b in itertools.combinations(runs, 2):
        stats = compare.compare_pair(a["scores"], b["scores"], ks)
        pairs.append({"runs": [a["label"], b["label"]], "spearman": _finite_or_none(stats["spearman"]),
                      "top_k": {str(k): {**entry, "shared": [list(head) for head in entry["shared"]]}
                                for k, entry in stats["top_k"].items()}})
    listed_runs = [{**{key: run_[key] for key in ("label", "path", "kind", "source", "model", "dataset", "ablation",
                                                   "epsilon")},
                    "top_heads": {str(k): [list(head) for head in compare.top_heads(run_["scores"], k)] for k in ks},
                    "tied_at_cutoff": {str(k): compare.tied_at_cutoff(run_["scores"], k) for k in ks}}
                   for run_ in runs]
    result = {
        "num_layers": int(num_layers), "num_heads": int(num_heads), "runs": listed_runs, "pairs": pairs,
        "top_k": ks, "skipped_top_k": skipped,
        "ranking": RANKING,
        "axes": {"runs.top_heads.K": ["rank", "(layer, head)"],
                 "pairs.top_k.K.shared": ["shared head, in the first run's rank order", "(layer, head)"]},
        "settings": config.to_dict(),
    }
    with io.RunFolder(config.out) as folder:
        folder.check(common.fingerprint("compare", config, {},
                                        {"runs": [[run_["label"], file_digest(run_["path"])] for run_ in runs]}))
        common.write_result(config.out, "compare.json", result)
        plots.plot_top_heads_overlap(
            num_layers, num_heads, [run_["label"] for run_ in runs],
            {k: [[tuple(head) for head in run_["top_heads"][str(k)]] for run_ in listed_runs] for k in ks},
            os.path.join(config.out, "compare_heads.png"),
            title=f"Top-k heads of {' vs '.join(_describe(run_) for run_ in runs)}",
            panel_titles={k: _panel_title(pairs[0], k) for k in ks} if len(pairs) == 1 else None)
    print(table(result))
    print(f"wrote {config.out}/compare.json and {config.out}/compare_heads.png")
    return result


def table(result: dict) -> str:
    """The runs and, per pair and k, overlap, expectation, p-value and Spearman as aligned text."""
    lines = [f"{len(result['runs'])} runs, {result['num_layers']} layers x {result['num_heads']} heads "
             f"({result['num_layers'] * result['num_heads']} heads):"]
    width = max(len(run_["label"]) for run_ in result["runs"])
    for run_ in result["runs"]:
        lines.append(f"  {run_['label']:<{width}}  {run_['kind']}, model {run_['model']}, dataset {run_['dataset']}, "
                     f"ablation {run_['ablation']}  ({run_['path']})")
    names = [" vs ".join(pair["runs"]) for pair in result["pairs"]]
    pair_width = max(len("pair"), *map(len, names))
    lines += ["", f"{'pair':<{pair_width}}  {'k':>4}  {'shared':>6}  {'expected':>8}  {'p_value':>9}  spearman"]
    for name, pair in zip(names, result["pairs"]):
        spearman = "n/a" if pair["spearman"] is None else f"{pair['spearman']:.3f}"
        for row, (k, entry) in enumerate(pair["top_k"].items()):
            lines.append(f"{name if row == 0 else '':<{pair_width}}  {k:>4}  {entry['overlap']:>6}  "
                         f"{entry['expected']:>8.2f}  {entry['p_value']:>9.3g}  {spearman if row == 0 else ''}"
                         .rstrip())
    return "\n".join(lines)


def _describe(run_: dict) -> str:
    details = ", ".join(str(value) for value in (run_["model"], run_["ablation"]) if value)
    return f"{run_['label']} ({details})" if details else run_["label"]


def _panel_title(pair: dict, k: int) -> str:
    entry = pair["top_k"][str(k)]
    return f"top-{k}: {entry['overlap']} shared (random: {entry['expected']:.2f}, p = {entry['p_value']:.2g})"


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None

