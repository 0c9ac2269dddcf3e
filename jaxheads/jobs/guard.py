"""`jaxheads guard train|eval|classify`: the four-tier input guard (docs/guard.md).

- `train`: LoRA fine-tuning of a model to score the four tier tokens after the guard prompt, on the train split of
  the built-in set (and any labelled sets added), then calibration of the temperature and of the Safe and Unsafe
  thresholds on a part of the training prompts kept out of training; writes the adapter (out/adapter), guard_train.json, training.png and
  the held-out evaluation (out/heldout). An interrupted run resumes from its last checkpoint.
- `eval`: classifies a labelled set and reports per-tier recall and precision, the confusion matrix, risk
  recall, false-alarm rate and over-caution (guard.json, guard.jsonl, guard_confusion.png).
- `classify`: the same for any prompt set; the metrics only when the set is labelled.

`jaxheads judge train|eval`: the response judge (docs/judge.md), the same recipe over (prompt, response) pairs.

- `train` (`train_judge`): LoRA fine-tuning to score the four label tokens on the train split of builtin:judge,
  calibration of the temperature on a part of it kept out of training; writes out/adapter, judge_train.json,
  training.png and the held-out evaluation (out/heldout).
- `eval` (`evaluate_judge`): labels a set of (prompt, response) pairs; with labels, accuracy, recall and precision
  per label, the confusion matrix and the agreement with the keyword judge (judge.json, judge.jsonl,
  judge_confusion.png), and the responses on which the two disagree most (judge_disagreements.jsonl).
"""

from __future__ import annotations

import collections
import json
import os
import time

import jax

from jaxheads import classifier, io, plots
from jaxheads import guard as guard_lib
from jaxheads.data.labels import HARMFUL, JUDGE_LABELS, REFUSAL
from jaxheads.data.loaders import load_labelled, load_responses, normalise_label
from jaxheads.eval import judges
from jaxheads.eval import metrics as metrics_lib
from jaxheads.eval.judges import KeywordJudge
from jaxheads.eval.metrics import format_rate
from jaxheads.guard import TIERS, load_guard
from jaxheads.jobs import common, model_judge, training


def check_classify_config(config) -> None:
    common.check_model_settings(config)
    common.require_int(config, "batch_size")
    common.require_int(config, "limit", minimum=0)
    common.require(config, "guard", bool(config.guard), "'builtin' or the folder of a `jaxheads guard train` run")
    if config.tier:
        normalise_label(config.tier, TIERS, "--tier")


def extra_sets(text: str) -> list[tuple[str, str | None, tuple[str, ...] | None]]:
    """`--extra`: comma-separated SOURCE=TIER (every prompt of SOURCE gets TIER) or SOURCE (a file with a tier
    column); a built-in SOURCE may name some of its categories, SOURCE@CATEGORY+CATEGORY. Each becomes
    (source, tier or None, categories or None)."""
    sets = []
    for part in filter(None, (part.strip() for part in text.split(","))):
        source, _, tier = part.rpartition("=") if "=" in part else (part, "", "")
        source, _, categories = source.strip().partition("@")
        chosen = tuple(filter(None, (name.strip() for name in categories.split("+")))) or None
        sets.append((source, tier.strip() or None, chosen))
    return sets


def check_train_config(config) -> None:
    common.check_model_settings(config)
    common.require_int(config, "calibration_every", minimum=2)
    common.require_int(config, "eval_batch_size")
    common.require(config, "risk_recall_target", 0 < config.risk_recall_target <= 1, "in (0, 1]")
    common.require(config, "false_alarm_target", config.false_alarm_target <= 1, "at most 1 (negative = no bar)")
    common.require(config, "lora_rank", isinstance(config.lora_rank, int) and config.lora_rank >= 1,
                   "an integer >= 1 (the guard is trained and shipped as a LoRA adapter)")
    for source, tier, _ in [(config.dataset, config.tier or None, None)] + extra_sets(config.extra):
        if tier is not None:
            normalise_label(tier, TIERS, f"the tier given for {source}")
    training.train_config(config, 1)


def load_training_rows(config):
    """The labelled prompts of --dataset and every --extra set, in order."""
    rows = load_labelled(config.dataset, tier=config.tier or None)
    for source, tier, categories in extra_sets(config.extra):
        rows += load_labelled(source, tier=tier, categories=categories)
    return rows


def train(config) -> dict:
    """Trains, calibrates, saves and evaluates the guard; returns the contents of guard_train.json."""
    check_train_config(config)

    def heldout_eval(trained, adapter_dir, rows, out):
        guard = guard_lib.Guard(trained, source=str(adapter_dir))
        return classify_and_write(guard, rows, out, config, dataset=config.heldout)

    def report(calibration):
        alarm = calibration["alarm_threshold"]
        print(f"calibration: temperature {calibration['temperature']:.3f}, Safe threshold "
              f"{calibration['threshold']:.4f}, Unsafe threshold {'none' if alarm is None else f'{alarm:.4f}'} "
              f"(on calibration: risk recall {metrics_lib.format_rate(calibration['metrics']['risk_recall'])}, "
              f"false alarms {metrics_lib.format_rate(calibration['metrics']['false_alarm'])})", flush=True)

    return train_task(config, guard_lib.GUARD_TASK, lambda: load_training_rows(config), lambda: load_heldout(config),
                      heldout_eval, report, "guard_train.json",
                      targets=dict(risk_recall_target=config.risk_recall_target,
                                   false_alarm_target=config.false_alarm_target if config.false_alarm_target >= 0
                                   else None),
                      exclude=("heldout", "eval_batch_size", "risk_recall_target", "false_alarm_target"))


def train_task(config, task, load_rows, load_heldout_rows, heldout_eval, report, result_name: str, targets: dict,
               exclude: tuple[str, ...]) -> dict:
    """What `jaxheads guard train` and `jaxheads judge train` share: loads the model and the labelled rows, keeps
    every `calibration_every`-th row of each (label, group) for calibration, fine-tunes the LoRA adapter of `task`
    (resuming), calibrates, saves out/adapter and training.png, evaluates the held-out rows with `heldout_eval`
    into out/heldout and writes `result_name`; returns its contents."""
    started = time.perf_counter()
    with io.RunFolder(config.out) as folder:
        model = common.load_model(config)
        rows = load_rows()
        train_rows, calibration_rows = classifier.calibration_split(rows, config.calibration_every)
        heldout = load_heldout_rows()
        data = {"train": [row_fields(row) for row in train_rows],
                "calibration": [row_fields(row) for row in calibration_rows]}
        # The calibration targets and the held-out set do not change the training: a finished run rerun with
        # other targets restores its last checkpoint and calibrates again.
        folder.check(common.fingerprint(f"{task.name}_train", config, {"model": model}, data, exclude=exclude),
                     ["checkpoints"])
        settings = training.train_config(config, len(train_rows))
        print(f"training the {task.name} on {len(train_rows)} examples for {settings.steps} steps; calibrating on "
              f"{len(calibration_rows)}", flush=True)
        train_started = time.perf_counter()
        trained, adapter, result = classifier.train_classifier(
            model, task, [row.item for row in train_rows], [row.label for row in train_rows],
            [row.item for row in calibration_rows], [row.label for row in calibration_rows], settings, config.out,
            **targets, model_spec=model_spec(config.model), batch_size=config.eval_batch_size,
            mesh=common.device_mesh(config),
            on_step=lambda step, record: print(f"step {step}: loss {record['loss']:.4f}", flush=True))
        train_seconds = time.perf_counter() - train_started
        adapter.info.update(train_seconds=train_seconds, dataset=config.dataset, extra=config.get("extra", ""),
                            train_counts=label_counts((row.label for row in train_rows), task.labels),
                            calibration_counts=label_counts((row.label for row in calibration_rows), task.labels))
        adapter_dir = adapter.save(os.path.join(config.out, "adapter"))
        training.plot_training(result.records, config.out, title=f"{task.name} training of {model.name}, "
                                                                 f"{len(train_rows)} examples")
        calibration = adapter.info["calibration"]
        report(calibration)
        heldout_result = None
        if heldout is not None:
            heldout_result = heldout_eval(trained, adapter_dir, heldout, os.path.join(config.out, "heldout"))
        output = {**common.shape_fields(model), "adapter": str(adapter_dir),
                  "adapter_bytes": sum(os.path.getsize(adapter_dir / name) for name in
                                       (classifier.ADAPTER_WEIGHTS, classifier.ADAPTER_META)),
                  "dataset": config.dataset, "extra": config.get("extra", ""), "num_train": len(train_rows),
                  "num_calibration": len(calibration_rows), "train_counts": adapter.info["train_counts"],
                  "calibration_counts": adapter.info["calibration_counts"], "steps": result.step,
                  "temperature": adapter.temperature, "threshold": adapter.threshold,
                  "alarm_threshold": adapter.alarm_threshold, "calibration": calibration,
                  "heldout": None if heldout_result is None else {
                      key: heldout_result[key] for key in ("dataset", "num_prompts", "counts", "metrics", "accuracy",
                                                           "keyword") if key in heldout_result},
                  "train_seconds": train_seconds, "total_seconds": time.perf_counter() - started,
                  "settings": config.to_dict()}
        common.write_result(config.out, result_name, output)
    print(f"wrote the {task.name} adapter {adapter_dir} and {config.out}/{result_name} "
          f"({output['total_seconds']:.0f} s)")
    return output


def row_fields(row) -> list:
    """A labelled row as the fingerprint records it: [prompt, label], or [prompt, response, label]."""
    return [row.prompt, row.label] if row.response is None else [row.prompt, row.response, row.label]


model_spec = common.adapter_spec


def load_heldout(config):
    return load_labelled(config.heldout) if config.heldout else None


def label_counts(labels, names) -> dict:
    counts = collections.Counter(labels)
    return {name: counts.get(name, 0) for name in names}


def tier_counts(labels) -> dict:
    return label_counts(labels, TIERS)


def classify_and_write(guard, rows, out: str, config, dataset: str, mesh=None) -> dict:
    """Classifies `rows` (LabelledPrompt) with `guard`; writes guard.jsonl, guard.json and (with labels)
    guard_confusion.png into `out`; returns the contents of guard.json."""
    os.makedirs(out, exist_ok=True)
    batch_size = config.get("batch_size", config.get("eval_batch_size"))
    started = time.perf_counter()
    tiers, probs = guard.classify([row.prompt for row in rows], batch_size=batch_size, mesh=mesh)
    seconds = time.perf_counter() - started
    labelled = all(row.label is not None for row in rows)
    lines = []
    for row, tier, p in zip(rows, tiers, probs):
        line = {"row": row.row, "prompt": row.prompt, "tier": tier,
                "probs": {name: float(value) for name, value in zip(guard_lib.TIERS, p)}}
        if row.label is not None:
            line["label"] = row.label
        lines.append(json.dumps(line) + "\n")
    io.atomic_write_text(os.path.join(out, "guard.jsonl"), "".join(lines))
    metrics = metrics_lib.metrics([row.label for row in rows], tiers, guard_lib.GUARD_TASK) if labelled else None
    counts = {"predicted": tier_counts(tiers)}
    if labelled:
        counts["labelled"] = tier_counts(row.label for row in rows)
    output = {"model": guard.classifier.model.name, "guard": guard.describe(), "dataset": dataset,
              "num_prompts": len(rows), "counts": counts, "metrics": metrics,
              "throughput": {"prompts": len(rows), "seconds": seconds, "prompts_per_second": len(rows) / seconds,
                             "batch_size": batch_size, "devices": jax.device_count(),
                             "mesh": None if mesh is None else dict(mesh.shape)},
              "settings": config.to_dict()}
    common.write_result(out, "guard.json", output)
    if labelled:
        plots.plot_confusion(metrics["confusion"], guard_lib.TIERS, os.path.join(out, "guard_confusion.png"),
                             title=f"guard on {len(rows)} prompts of {dataset}")
        print(summary_lines(metrics), flush=True)
    print(f"{len(rows)} prompts: " + ", ".join(f"{tier} {n}" for tier, n in counts["predicted"].items())
          + f" ({len(rows) / seconds:.1f} prompts/s); wrote {out}/guard.json and guard.jsonl", flush=True)
    return output


def summary_lines(metrics: dict) -> str:
    lines = [f"{tier}: recall {format_rate(metrics['recall'][tier])}, precision "
             f"{format_rate(metrics['precision'][tier])}" for tier in metrics["labels"]]
    lines += [f"{name.replace('_', ' ')}: {format_rate(metrics[name])}"
              for name in ("risk_recall", "false_alarm", "over_caution")]
    return "\n".join(lines)


def _classify_job(config, require_labels: bool) -> dict:
    check_classify_config(config)
    rows = load_labelled(config.dataset, tier=config.tier or None, column=config.column or None,
                         limit=config.limit or None, required=require_labels)
    with io.RunFolder(config.out) as folder:
        mesh = common.device_mesh(config)
        guard = load_guard(config.guard, model=config.model or None, dtype=config.dtype, mesh=mesh)
        adapter = guard_lib.builtin_adapter_dir() if config.guard == guard_lib.BUILTIN else config.guard
        folder.check(common.fingerprint("guard_eval" if require_labels else "guard_classify", config,
                                        {"model": guard.classifier.model},
                                        {"rows": [row_fields(row) for row in rows],
                                         "adapter": common.adapter_fingerprint(adapter)}))
        return classify_and_write(guard, rows, config.out, config, config.dataset, mesh=mesh)


def evaluate(config) -> dict:
    """Classifies a labelled set; returns the contents of guard.json (with the metrics)."""
    return _classify_job(config, require_labels=True)


def classify(config) -> dict:
    """Classifies any prompt set; returns the contents of guard.json (metrics when the set is labelled)."""
    return _classify_job(config, require_labels=False)


# The response judge (docs/judge.md): `jaxheads judge train|eval`

JUDGE_LINES = "judge.jsonl"
JUDGE_RESULT = "judge.json"
JUDGE_DISAGREEMENTS = "judge_disagreements.jsonl"
JUDGE_SUCCESS_DISAGREEMENTS = "judge_success_disagreements.jsonl"


def check_judge_train_config(config) -> None:
    common.check_model_settings(config)
    common.require_int(config, "calibration_every", minimum=2)
    common.require_int(config, "eval_batch_size")
    common.require_int(config, "disagreements", minimum=0)
    common.require(config, "lora_rank", isinstance(config.lora_rank, int) and config.lora_rank >= 1,
                   "an integer >= 1 (the judge is trained and shipped as a LoRA adapter)")
    training.train_config(config, 1)


def train_judge(config) -> dict:
    """Trains, calibrates (temperature), saves and evaluates the response judge; returns judge_train.json."""
    check_judge_train_config(config)

    def heldout_eval(trained, adapter_dir, rows, out):
        judge = judges.ResponseJudge(trained, str(adapter_dir), config.eval_batch_size)
        return judge_and_write(judge, rows, out, config, config.heldout, config.eval_batch_size)

    def report(calibration):
        print(f"calibration: temperature {calibration['temperature']:.3f}, NLL {calibration['nll_before']:.3f} -> "
              f"{calibration['nll_after']:.3f} on {calibration['n']} responses kept out of training", flush=True)

    return train_task(config, judges.JUDGE_TASK, lambda: load_responses(config.dataset),
                      lambda: load_responses(config.heldout) if config.heldout else None, heldout_eval, report,
                      "judge_train.json", targets=dict(risk_recall_target=1.0),
                      exclude=("heldout", "eval_batch_size", "disagreements"))


def judge_and_write(judge, rows, out: str, config, dataset: str, batch_size: int, mesh=None) -> dict:
    """Labels `rows` (labelled responses) with the response `judge`; writes judge.jsonl (one line per response:
    the judge's label and probabilities, the keyword judge's verdict, the true label when known), judge.json
    (counts; with labels: accuracy, recall and precision per label, the confusion matrix, the keyword judge's
    agreement with the judge and with the labels) and, with labels, judge_confusion.png, and the
    `config.disagreements` responses on which the keyword judge and the response judge disagree most about refusal
    (keyword refused vs judge label refusal, ranked by the judge's probability of its own label) to
    judge_disagreements.jsonl, and those on which they disagree most about attack success (keyword not refused vs
    judge label harmful_compliance) to judge_success_disagreements.jsonl. Returns the contents of judge.json."""
    os.makedirs(out, exist_ok=True)
    labels = JUDGE_LABELS
    prompts, responses = [row.prompt for row in rows], [row.response for row in rows]
    started = time.perf_counter()
    predicted, probs = judge.classify(prompts, responses, batch_size=batch_size, mesh=mesh)
    seconds = time.perf_counter() - started
    keyword = KeywordJudge()(prompts, responses)
    labelled = all(row.label is not None for row in rows)
    lines = []
    for row, label, p, refused in zip(rows, predicted, probs, keyword):
        line = {"row": row.row, "prompt": row.prompt, "response": row.response, "judge_label": label,
                "probs": {name: float(value) for name, value in zip(labels, p)}, "keyword_refused": bool(refused)}
        if row.label is not None:
            line["label"] = row.label
        lines.append(line)
    io.atomic_write_jsonl(os.path.join(out, JUDGE_LINES), lines)

    def most_confident(disagreeing, path):
        disagreeing = sorted(disagreeing, key=lambda line: -line["probs"][line["judge_label"]])
        shown = [{**line, "judge_probability": line["probs"][line["judge_label"]]}
                 for line in disagreeing[:config.disagreements]]
        io.atomic_write_jsonl(os.path.join(out, path), shown)
        return len(shown)

    # On refusal (keyword "refused" vs label refusal), and on attack success (keyword "not refused" vs label
    # harmful_compliance), as the ASR counts it.
    written = most_confident([line for line in lines
                              if line["keyword_refused"] != (line["judge_label"] == REFUSAL)],
                             JUDGE_DISAGREEMENTS)
    written_success = most_confident([line for line in lines
                                      if (not line["keyword_refused"]) != (line["judge_label"] == HARMFUL)],
                                     JUDGE_SUCCESS_DISAGREEMENTS)
    n = len(rows)
    agree_judge = sum(refused == (label == REFUSAL) for label, refused in zip(predicted, keyword))
    agree_success = sum((not refused) == (label == HARMFUL) for label, refused in zip(predicted, keyword))
    keyword_summary = {"refusals": int(sum(keyword)),
                       "agreement_with_judge": metrics_lib.rate(agree_judge, n),
                       "disagreements_with_judge": n - agree_judge,
                       "disagreements_written": written,
                       "rule": "keyword refused == (label == refusal)",
                       "attack_success_agreement_with_judge": metrics_lib.rate(agree_success, n),
                       "attack_success_disagreements_written": written_success,
                       "asr_by_judge": sum(label == HARMFUL for label in predicted) / n,
                       "asr_by_keyword": sum(not refused for refused in keyword) / n}
    counts = {"predicted": label_counts(predicted, labels)}
    metrics = accuracy = None
    if labelled:
        truth = [row.label for row in rows]
        counts["labelled"] = label_counts(truth, labels)
        metrics = metrics_lib.metrics(truth, predicted, judges.JUDGE_TASK)
        accuracy = metrics_lib.rate(sum(a == b for a, b in zip(truth, predicted)), n)
        agree_labels = sum(refused == (label == REFUSAL) for label, refused in zip(truth, keyword))
        success = sum((not refused) == (label == HARMFUL) for label, refused in zip(truth, keyword))
        keyword_summary.update(
            agreement_with_labels=metrics_lib.rate(agree_labels, n),
            attack_success_agreement_with_labels=metrics_lib.rate(success, n),
            asr_by_labels=counts["labelled"][HARMFUL] / n)
    output = {"model": judge.classifier.model.name, "judge": judge.describe(), "dataset": dataset, "num_prompts": n,
              "counts": counts, "accuracy": accuracy, "metrics": metrics, "keyword": keyword_summary,
              "throughput": {"responses": n, "seconds": seconds, "responses_per_second": n / seconds,
                             "batch_size": batch_size, "devices": jax.device_count(),
                             "mesh": None if mesh is None else dict(mesh.shape)},
              "settings": config.to_dict()}
    common.write_result(out, JUDGE_RESULT, output)
    if labelled:
        plots.plot_confusion(metrics["confusion"], labels, os.path.join(out, "judge_confusion.png"),
                             title=f"response judge on {n} responses of {dataset}")
        print(f"accuracy {metrics_lib.format_rate(accuracy)}", flush=True)
        print("\n".join(f"{name}: recall {metrics_lib.format_rate(metrics['recall'][name])}, precision "
                        f"{metrics_lib.format_rate(metrics['precision'][name])}" for name in labels), flush=True)
    print(f"keyword judge agrees with the response judge on refusal for "
          f"{metrics_lib.format_rate(keyword_summary['agreement_with_judge'])}; {n} responses: "
          + ", ".join(f"{name} {count}" for name, count in counts["predicted"].items())
          + f"; wrote {out}/{JUDGE_RESULT}, {JUDGE_LINES}, {JUDGE_DISAGREEMENTS} and {JUDGE_SUCCESS_DISAGREEMENTS}",
          flush=True)
    return output


def evaluate_judge(config) -> dict:
    """Labels a set of (prompt, response) pairs with a response judge; returns the contents of judge.json (with the
    metrics when the set is labelled)."""
    if model_judge.is_spec(config.judge):  # a model judge (docs/judges.md) re-judges the pairs
        return model_judge.run(config)
    common.check_model_settings(config)
    common.require_int(config, "batch_size")
    common.require_int(config, "limit", "disagreements", minimum=0)
    common.require(config, "judge", bool(config.judge),
                   "guard (the shipped judge) or the folder of a `jaxheads judge train` run")
    judges.judge_adapter(config.judge)  # a bad --judge stops before any work
    rows = load_responses(config.dataset, limit=config.limit or None, required=False)
    with io.RunFolder(config.out) as folder:
        mesh = common.device_mesh(config)
        judge = judges.load_judge(config.judge, model=config.model or None, dtype=config.dtype, mesh=mesh,
                                     batch_size=config.batch_size)
        folder.check(common.fingerprint("judge_eval", config, {"model": judge.classifier.model},
                                        {"rows": [row_fields(row) for row in rows],
                                         "adapter": common.judge_fingerprint(config.judge)}))
        return judge_and_write(judge, rows, config.out, config, config.dataset, config.batch_size, mesh=mesh)
