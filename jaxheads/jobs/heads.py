"""Head files (ships.json, sahara.json) read by the jobs that apply their heads, checked against the model they
are applied to."""

from __future__ import annotations

import numpy as np

from jaxheads import io
from jaxheads.errors import DataError
from jaxheads.jobs.common import model_identity
from jaxheads.loading import model_name


def read_head_file(path: str, flag: str, model, need: str | None = None) -> dict:
    """A head file (ships.json, sahara.json) that `--flag` names, checked to be of `model` (`check_head_file`) and,
    with `need`, to hold chosen heads ("heads": a sahara.json) or query-level scores ("query": a query-level
    ships.json, `[prompt, layer, head]`)."""
    result = io.read_json(path)
    if not isinstance(result, dict):
        raise DataError(f"--{flag}={path} holds a JSON {type(result).__name__}, not a jaxheads result file")
    check_head_file(result, path, flag, model)
    if need == "heads":
        heads = result.get("heads")
        if not isinstance(heads, list) or not all(isinstance(head, list) and len(head) == 2 for head in heads):
            what = "a ships.json (scores per head, no chosen heads)" if "scores" in result else "not a sahara.json"
            raise DataError(f"--{flag}={path} is {what}: it has no list of [layer, head] pairs under \"heads\"; give "
                            "the sahara.json that jaxheads sahara writes (a ships.json's heads are --top_k_from)")
    if need == "query":
        scores = np.asarray(result.get("scores", []), dtype=object)
        if result.get("level", "query") != "query" or scores.ndim != 3 or "queries" not in result:
            level = result.get("level") or ("a sahara.json" if "heads" in result else "unknown")
            raise DataError(f"--{flag}={path} holds no query-level scores [prompt, layer, head] (its level is "
                            f"{level}); each prompt's own top heads need a ships.json of `jaxheads ships "
                            "--level=query`")
    return result


def check_head_file(result: dict, path: str, flag: str, model) -> None:
    """A head file (ships.json, sahara.json) is of `model`: the same `model_fingerprint` when the file records one
    (the same files, loaded from any path in any dtype), else the same model name; and the same number of layers
    and heads. Raises a one-line error naming the file and both models otherwise. A file that records none of
    these (a list of heads written by hand) is only checked head by head, against the model's shape, later."""
    shape = (result.get("num_layers"), result.get("num_heads"))
    here = (model.config.num_layers, model.config.num_heads)
    if shape == (None, None) and "model" not in result and "model_fingerprint" not in result:
        return
    recorded = result.get("model", "(no model recorded)")
    described = f"model {recorded} ({shape[0]} layers x {shape[1]} heads)"
    other = f"not of the model this run loads, {model.name} ({here[0]} layers x {here[1]} heads)"
    if shape != here:
        raise DataError(f"--{flag}={path} was computed on {described}, {other}; compute it on this model")
    if "model_fingerprint" in result:
        if result["model_fingerprint"] != model_identity(model):
            raise DataError(f"--{flag}={path} was computed on {described} whose files differ from those of the "
                            f"model this run loads, {model.name} (model_fingerprint {result['model_fingerprint'][:12]}"
                            f" vs {model_identity(model)[:12]}); compute it on this model")
    elif model_name(str(recorded)) != model_name(model.name):
        raise DataError(f"--{flag}={path} was computed on {described}, {other}; compute it on this model")
