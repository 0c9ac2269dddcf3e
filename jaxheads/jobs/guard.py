"""`jaxheads guard train|eval|classify`: the four-tier input guard (docs/guard.md).

- `train`: LoRA fine-tuning of a model to score the four tier tokens after the guard prompt, on the train split of
  the built-in set (and any labelled sets added), then calibration of the temperature and of the Safe and Unsafe
  thresholds on a part of the training prompts kept out of training; writes the adapter (out/adapter), guard_train.json, training.png and
  the held-out evaluation (out/heldout). An interrupted run resumes from its last checkpoint.
- `eval`: classifies a labelled set and reports per-tier recall and precision, the confusion matrix, risk
  recall, false-alarm rate and over-caution (guard.json, guard.jsonl, guard_confusion.png).
- `classify`: the same for any prompt set; the metrics only when the set is labelled.
"""

from __future__ import annotations

import collections
import json
import os
import time

from jaxheads import io
from jaxheads.jobs import common


def check_classify_config(config) -> None:
    common.check_model_settings(config)
    common.require_int(config, "batch_size")
    common.require_int(config, "limit", minimum=0)
    common.require(config, "guard", bool, "'builtin' or the folder of a `jaxheads guard train` run")
    if config.tier:
        from jaxheads.data.loaders import normalise_label
        from jaxheads.guard import TIERS

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
    from jaxheads.data.loaders import normalise_label
    from jaxheads.guard import TIERS
    from jaxheads.jobs import training

    common.check_model_settings(config)
    common.require_int(config, "calibration_every", minimum=2)
    common.require_int(config, "eval_batch_size")
    common.require(config, "risk_recall_target", lambda value: 0 < value <= 1, "in (0, 1]")
    common.require(config, "false_alarm_target", lambda value: value <= 1, "at most 1 (negative = no bar)")
    common.require(config, "lora_rank", lambda value: isinstance(value, int) and value >= 1,
                   "an integer >= 1 (the guard is trained and shipped as a LoRA adapter)")
    for source, tier, _ in [(config.dataset, config.tier or None, None)] + extra_sets(config.extra):
        if tier is not None:
            normalise_label(tier, TIERS, f"the tier given for {source}")
    training.train_config(config, 1)


def load_training_rows(config):
    """The labelled prompts of --dataset and every --extra set, in order."""
    from jaxheads.data.loaders import load_labelled

    rows = load_labelled(config.dataset, tier=config.tier or None)
    for source, tier, categories in extra_sets(config.extra):
        rows += load_labelled(source, tier=tier, categories=categories)
    return rows


def train(config) -> dict:
    """Trains, calibrates, saves and evaluates the guard; returns the contents of guard_train.json."""
    from jaxheads import guard as guard_lib
    from jaxheads.jobs import training

    started = time.perf_counter()
    check_train_config(config)
    with io.RunFolder(config.out) as folder:
        model = common.load_model(config)
        rows = load_training_rows(config)
        train_rows, calibration_rows = guard_lib.calibration_split(rows, config.calibration_every)
        heldout = load_heldout(config)
        data = {"train": [[row.prompt, row.label] for row in train_rows],
                "calibration": [[row.prompt, row.label] for row in calibration_rows]}
        # The calibration targets and the held-out set do not change the training: a finished run rerun with
        # other targets restores its last checkpoint and calibrates again.
        folder.check(common.fingerprint("guard_train", config, {"model": model}, data,
                                        exclude=("heldout", "eval_batch_size", "risk_recall_target",
                                                 "false_alarm_target")), ["checkpoints"])
        settings = training.train_config(config, len(train_rows))
        print(f"training the guard on {len(train_rows)} prompts for {settings.steps} steps; calibrating on "
              f"{len(calibration_rows)}", flush=True)
        train_started = time.perf_counter()
        classifier, adapter, result = guard_lib.train_classifier(
            model, guard_lib.GUARD_TASK, [row.prompt for row in train_rows], [row.label for row in train_rows],
            [row.prompt for row in calibration_rows], [row.label for row in calibration_rows], settings, config.out,
            risk_recall_target=config.risk_recall_target,
            false_alarm_target=config.false_alarm_target if config.false_alarm_target >= 0 else None,
            model_spec=model_spec(config.model),
            batch_size=config.eval_batch_size, mesh=common.device_mesh(config),
            on_step=lambda step, record: print(f"step {step}: loss {record['loss']:.4f}", flush=True))
        train_seconds = time.perf_counter() - train_started
        adapter.info.update(train_seconds=train_seconds, dataset=config.dataset, extra=config.extra,
                            train_counts=tier_counts(row.label for row in train_rows),
                            calibration_counts=tier_counts(row.label for row in calibration_rows))
        adapter_dir = adapter.save(os.path.join(config.out, "adapter"))
        training.plot_training(result.records, config.out, title=f"guard training of {model.name}, "
                                                                 f"{len(train_rows)} prompts")
        calibration = adapter.info["calibration"]
        alarm = calibration["alarm_threshold"]
        print(f"calibration: temperature {calibration['temperature']:.3f}, Safe threshold "
              f"{calibration['threshold']:.4f}, Unsafe threshold {'none' if alarm is None else f'{alarm:.4f}'} "
              f"(on calibration: risk recall {guard_lib.format_rate(calibration['metrics']['risk_recall'])}, "
              f"false alarms {guard_lib.format_rate(calibration['metrics']['false_alarm'])})", flush=True)
        heldout_result = None
        if heldout is not None:
            guard = guard_lib.Guard(classifier, source=str(adapter_dir))
            heldout_result = classify_and_write(guard, heldout, os.path.join(config.out, "heldout"), config,
                                                dataset=config.heldout)
        output = {**common.shape_fields(model), "adapter": str(adapter_dir),
                  "adapter_bytes": sum(os.path.getsize(adapter_dir / name) for name in
                                       (guard_lib.ADAPTER_WEIGHTS, guard_lib.ADAPTER_META)),
                  "dataset": config.dataset, "extra": config.extra, "num_train": len(train_rows),
                  "num_calibration": len(calibration_rows), "train_counts": adapter.info["train_counts"],
                  "calibration_counts": adapter.info["calibration_counts"], "steps": result.step,
                  "temperature": adapter.temperature, "threshold": adapter.threshold,
                  "alarm_threshold": adapter.alarm_threshold, "calibration": calibration,
                  "heldout": None if heldout_result is None else {
                      key: heldout_result[key] for key in ("dataset", "num_prompts", "counts", "metrics")},
                  "train_seconds": train_seconds, "total_seconds": time.perf_counter() - started,
                  "settings": config.to_dict()}
        common.write_result(config.out, "guard_train.json", output)
    print(f"wrote the guard adapter {adapter_dir} and {config.out}/guard_train.json "
          f"({output['total_seconds']:.0f} s)")
    return output


def model_spec(spec: str) -> str:
    """The model spec recorded with an adapter: a local path made absolute, anything else as given."""
    return os.path.abspath(spec) if spec and os.path.exists(spec) else spec


def load_heldout(config):
    from jaxheads.data.loaders import load_labelled

    return load_labelled(config.heldout) if config.heldout else None


def tier_counts(labels) -> dict:
    from jaxheads.guard import TIERS

    counts = collections.Counter(labels)
    return {tier: counts.get(tier, 0) for tier in TIERS}


def classify_and_write(guard, rows, out: str, config, dataset: str, mesh=None) -> dict:
    """Classifies `rows` (LabelledPrompt) with `guard`; writes guard.jsonl, guard.json and (with labels)
    guard_confusion.png into `out`; returns the contents of guard.json."""
    import jax

    from jaxheads import guard as guard_lib
    from jaxheads import plots

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
    metrics = guard_lib.metrics([row.label for row in rows], tiers) if labelled else None
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
    from jaxheads.guard import format_rate

    lines = [f"{tier}: recall {format_rate(metrics['recall'][tier])}, precision "
             f"{format_rate(metrics['precision'][tier])}" for tier in metrics["labels"]]
    lines += [f"{name.replace('_', ' ')}: {format_rate(metrics[name])}"
              for name in ("risk_recall", "false_alarm", "over_caution")]
    return "\n".join(lines)


def _classify_job(config, require_labels: bool) -> dict:
    from jaxheads.data.loaders import load_labelled
    from jaxheads.guard import load_guard

    check_classify_config(config)
    rows = load_labelled(config.dataset, tier=config.tier or None, column=config.column or None,
                         limit=config.limit or None, required=require_labels)
    with io.RunFolder(config.out):
        mesh = common.device_mesh(config)
        guard = load_guard(config.guard, model=config.model or None, dtype=config.dtype, mesh=mesh)
        return classify_and_write(guard, rows, config.out, config, config.dataset, mesh=mesh)


def evaluate(config) -> dict:
    """Classifies a labelled set; returns the contents of guard.json (with the metrics)."""
    return _classify_job(config, require_labels=True)


def classify(config) -> dict:
    """Classifies any prompt set; returns the contents of guard.json (metrics when the set is labelled)."""
    return _classify_job(config, require_labels=False)
