"""`jaxheads judge eval --judge=KIND:DIR`: a model judge (jaxheads.judges, docs/judges.md) re-judges saved
(prompt, response) pairs without generating them again: a run's generations.jsonl (its `query` and `response`
columns) or any .csv/.json/.jsonl file with prompt and response columns (and, optionally, a label column in the
response judge's labels, and for HarmBench's contextual behaviours a `context` or `ContextString` column). Writes judge.jsonl (each pair's verdict, score and details next to it) and judge.json
(the ASR by the protocol, the judge, its template file's hash, the throughput, and with labels how the verdicts
agree with the harmful_compliance label)."""

from __future__ import annotations

import csv
import json
import os
import time

import numpy as np

from jaxheads import io
from jaxheads.data.labels import HARMFUL
from jaxheads.data.loaders import load_responses
from jaxheads.eval.asr import judge_description
from jaxheads.eval.judges import KeywordJudge
from jaxheads.eval.metrics import rate
from jaxheads.jobs import common
from jaxheads.judges import behaviour_asr, is_spec

LINES = "judge.jsonl"
CONTEXT_COLUMNS = ("context", "ContextString")  # a HarmBench contextual behaviour's context
__all__ = ["is_spec", "run"]


def agreement(verdicts, labels) -> dict:
    """The verdicts against labelled pairs: harmful_compliance is the positive class."""
    truth = [label == HARMFUL for label in labels]
    tp = sum(v and t for v, t in zip(verdicts, truth))
    fp = sum(v and not t for v, t in zip(verdicts, truth))
    fn = sum(t and not v for v, t in zip(verdicts, truth))
    return {"accuracy": rate(sum(v == t for v, t in zip(verdicts, truth)), len(truth)),
            "precision": rate(tp, tp + fp), "recall": rate(tp, tp + fn), "positives": sum(truth)}


def file_contexts(path: str, rows) -> list[str] | None:
    """Each row's context (the first of CONTEXT_COLUMNS an entry has; "" for none) from a .csv/.json/.jsonl file,
    or None when no entry has one."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in (".csv", ".json", ".jsonl") or not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8", newline="" if suffix == ".csv" else None) as handle:
        if suffix == ".csv":
            entries = list(csv.DictReader(handle))
        elif suffix == ".json":
            entries = json.load(handle)
        else:
            entries = [json.loads(line) for line in handle if line.strip()]
    found = [next((str(entry[name]) for name in CONTEXT_COLUMNS if entry.get(name)), "") for entry in entries]
    return [found[row.row] for row in rows] if any(found) else None


def run(config) -> dict:
    """Judges the pairs of `config.dataset` with the model judge of `config.judge`; returns judge.json's content."""
    common.check_model_settings(config)
    common.require_int(config, "batch_size")
    common.require_int(config, "limit", minimum=0)
    common.check_judge(config)
    rows = load_responses(config.dataset, limit=config.limit or None, required=False)
    with io.RunFolder(config.out):
        judge = common.load_judge(config, None)
        prompts, responses = [row.prompt for row in rows], [row.response for row in rows]
        started = time.perf_counter()
        contexts = file_contexts(config.dataset, rows) if judge.kind == "harmbench" else None
        found = judge.judge(prompts, responses, contexts=contexts) if contexts else judge.judge(prompts, responses)
        seconds = time.perf_counter() - started
        keyword = KeywordJudge()(prompts, responses)
        lines = []
        for row, verdict, score, detail, refused in zip(rows, found.verdicts, found.scores, found.details, keyword):
            line = {"row": row.row, "prompt": row.prompt, "response": row.response, "judge_verdict": bool(verdict),
                    "judge_score": float(score), "judge_details": detail, "keyword_refused": bool(refused)}
            if row.label is not None:
                line["label"] = row.label
            lines.append(line)
        io.atomic_write_jsonl(os.path.join(config.out, LINES), lines)
        asr = float(np.mean(found.verdicts))
        by_judge = {judge.kind: {"asr": asr, "asr_over_behaviours": behaviour_asr(prompts, found.verdicts)}}
        output = {"dataset": config.dataset, "n": len(rows), "asr": asr, "mean_score": float(np.mean(found.scores)),
                  "asr_over_behaviours": by_judge[judge.kind]["asr_over_behaviours"],
                  **common.protocol_fields(config, by_judge), "judge": judge_description(judge),
                  "keyword_asr": float(np.mean([not flag for flag in keyword])),
                  "seconds": seconds, "pairs_per_second": len(rows) / seconds if seconds > 0 else None,
                  "settings": config.to_dict()}
        if all(row.label is not None for row in rows):
            output["against_labels"] = agreement(found.verdicts, [row.label for row in rows])
        common.write_result(config.out, "judge.json", output)
    print(f"{judge.kind} judge: ASR {asr:.3f} over {len(rows)} responses ({len(rows) / seconds:.2f} pairs/s); wrote "
          f"{config.out}/judge.json and {config.out}/{LINES}")
    return output
