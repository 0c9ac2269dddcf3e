"""The classifier core behind the guard (jaxheads.guard) and the response judge (jaxheads.eval.judges): a task,
the adapter file format, batched scoring of inputs on a mesh, the decision rule, calibration and training.

The recipe is generic (`Task`, `Classifier`): a fixed prompt template with a text field per input (the guard has
one, `{prompt}`; the response judge adds `{response}`), one single token per label, and one forward pass per
input whose log-softmax over the label tokens' logits at the last position gives the label probabilities. The
model is fine-tuned with LoRA on (template, label token) examples through `jaxheads.train` (the loss is on the
label token only), then calibrated on a part of the training data it was not trained on: a temperature T scales
the label logits (fitted by the negative log-likelihood), a threshold on the probability of the task's `negative`
label (Safe) is chosen so that the calibration part's risk recall reaches a target, and a threshold on the
probability of its `alarm` label (Unsafe) so that its false-alarm rate stays within a target. The result is an
`Adapter`: the LoRA arrays, the model shape they fit, the task, T and the thresholds, saved as
`adapter.safetensors` + `adapter.json` (a few MB for SmolLM2-135M).

Decision rule: with probabilities p = softmax(z / T) over the labels, the input is the `negative` label (Safe)
when p_negative > threshold (the threshold is at least 0.5, so Safe is then also the most probable label);
otherwise it is the most probable of the other labels, except that the `alarm` label (Unsafe) also needs
p_alarm > alarm_threshold: when it is the most probable but not above that bar, the input gets the most probable
of the remaining labels (a Safe prompt that looks risky is then answered with care instead of refused).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import string
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from safetensors.numpy import load_file, save

from jaxheads import io, tokens
from jaxheads.data.labels import RESPONSE_COLUMN
from jaxheads.data.loaders import LabelledPrompt
from jaxheads.errors import DataError, JaxheadsError, LoadError
from jaxheads.eval.calibration import choose_alarm_threshold, choose_threshold, fit_temperature, nll, softmax
from jaxheads.eval.metrics import metrics
from jaxheads.models import params as param_table
from jaxheads.models.decoder import positions_from_mask, prompt_attention_mask
from jaxheads.placement import split_on_mesh
from jaxheads.sharding import DATA, place_rows, to_host
from jaxheads.train import Example, LoraConfig, train
from jaxheads.train.lora import fan_in_out, merge
from jaxheads.weights.build import module_from_arrays

ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_META = "adapter.json"
ADAPTER_FORMAT = "jaxheads-classifier-adapter"
ADAPTER_DTYPE = np.float16  # LoRA arrays are stored (and calibrated) at this precision: half the size of float32
SHAPE_FIELDS = ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                "num_kv_heads", "head_dim")


@dataclasses.dataclass(frozen=True)
class Task:
    """What a classifier sorts inputs into: its `labels`, one single-token text per label (`label_tokens`, read
    at the position after the formatted `template`), the template (a `str.format` text with one field per input
    text, e.g. `{prompt}`), and optionally the `negative` label (predicted only above the calibrated threshold;
    the "risk" metrics count everything else as risky) and the `alarm` label (its false alarms are counted)."""

    name: str
    labels: tuple[str, ...]
    label_tokens: tuple[str, ...]
    template: str
    negative: str | None = None
    alarm: str | None = None

    def __post_init__(self):
        if len(self.labels) < 2 or len(set(self.labels)) != len(self.labels):
            raise JaxheadsError(f"a task needs at least two distinct labels, got {self.labels}")
        if len(self.label_tokens) != len(self.labels) or len(set(self.label_tokens)) != len(self.label_tokens):
            raise JaxheadsError(f"a task needs one distinct label token per label; got {self.label_tokens} for "
                                f"{self.labels}")
        for name in (self.negative, self.alarm):
            if name is not None and name not in self.labels:
                raise JaxheadsError(f"{name!r} is not one of the labels {self.labels}")
        if not self.fields:
            raise JaxheadsError(f"the template of task {self.name!r} has no {{field}} for the input text")

    @property
    def fields(self) -> tuple[str, ...]:
        """The template's input fields, in order."""
        return tuple(dict.fromkeys(name for _, name, _, _ in string.Formatter().parse(self.template) if name))

    def format(self, item: str | dict) -> str:
        """The classifier's input text for one item: a text (tasks with one field) or a dict of the fields."""
        values = {self.fields[0]: item} if isinstance(item, str) and len(self.fields) == 1 else item
        if not isinstance(values, dict) or set(values) != set(self.fields):
            raise DataError(f"task {self.name!r} needs the fields {', '.join(self.fields)} per input, got {item!r}")
        for name, value in values.items():
            # a model can answer with nothing, and the judge has to label that too (a non-answer)
            if not isinstance(value, str) or (name != RESPONSE_COLUMN and not value.strip()):
                raise DataError(f"the {name} of an input must be non-empty text, got {value!r}")
        return self.template.format(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "Task":
        return cls(**{**values, "labels": tuple(values["labels"]), "label_tokens": tuple(values["label_tokens"])})


def label_token_ids(tokenizer, task: Task) -> tuple[int, ...]:
    """The token id of each label token; a label text that the tokenizer does not encode as one token is an
    error naming it."""
    if tokenizer is None:
        raise LoadError("a classifier needs the model's tokenizer, and this model has none")
    ids = []
    for label, text in zip(task.labels, task.label_tokens):
        tokens = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        if len(tokens) != 1:
            raise DataError(f"the label token {text!r} of {label!r} is {len(tokens)} tokens for this tokenizer "
                            f"({tokens}); choose label texts that are single tokens")
        ids.append(int(tokens[0]))
    unknown = getattr(tokenizer, "unk_token_id", None)
    if len(set(ids)) != len(ids) or (unknown is not None and unknown in ids):
        raise DataError(f"the label tokens {list(task.label_tokens)} are the token ids {ids} for this tokenizer, which "
                        "are not distinct known tokens; choose other label texts")
    return tuple(ids)


def model_shape(cfg) -> dict:
    """The architecture fields an adapter must match."""
    return {name: getattr(cfg, name) for name in SHAPE_FIELDS}


@dataclasses.dataclass
class Adapter:
    """A trained classifier: LoRA arrays `{target: {"a": [L, in, r], "b": [L, r, out]}}` for `model` (its name,
    the spec it was loaded from, and its shape), the task, the label token ids, and the calibration (temperature,
    threshold on P(negative), alarm threshold on P(alarm)); `info` records how it was trained and calibrated."""

    task: Task
    label_token_ids: tuple[int, ...]
    lora_rank: int
    lora_alpha: float
    arrays: dict[str, dict[str, np.ndarray]]
    model: dict
    temperature: float = 1.0
    threshold: float | None = None
    alarm_threshold: float | None = None
    info: dict = dataclasses.field(default_factory=dict)

    @property
    def lora(self) -> LoraConfig:
        return LoraConfig(self.lora_rank, self.lora_alpha, tuple(self.arrays))

    def save(self, directory: str | os.PathLike) -> pathlib.Path:
        """Writes `adapter.safetensors` and `adapter.json` into `directory` (atomically each)."""
        directory = pathlib.Path(directory)
        tensors = {f"{target}.{part}": np.ascontiguousarray(array, ADAPTER_DTYPE)
                   for target, pair in self.arrays.items() for part, array in pair.items()}
        data = save(tensors, metadata={"format": ADAPTER_FORMAT})
        io._atomic_write(directory / ADAPTER_WEIGHTS, lambda handle: handle.write(data))
        meta = {"format": ADAPTER_FORMAT, "version": 1, "task": self.task.to_dict(),
                "label_token_ids": list(self.label_token_ids),
                "lora": {"rank": self.lora_rank, "alpha": self.lora_alpha, "targets": list(self.arrays)},
                "model": self.model, "temperature": self.temperature, "threshold": self.threshold,
                "alarm_threshold": self.alarm_threshold, "info": self.info}
        io.atomic_write_json(directory / ADAPTER_META, meta)
        return directory

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Adapter":
        """The adapter in `path`: a folder holding adapter.json and adapter.safetensors, or a `jaxheads guard
        train` output folder (its `adapter/`)."""
        directory = pathlib.Path(os.path.expanduser(str(path)))
        if not (directory / ADAPTER_META).is_file() and (directory / "adapter" / ADAPTER_META).is_file():
            directory = directory / "adapter"
        if not (directory / ADAPTER_META).is_file() or not (directory / ADAPTER_WEIGHTS).is_file():
            raise LoadError(f"{path} holds no classifier adapter ({ADAPTER_META} and {ADAPTER_WEIGHTS}); give the "
                            "folder a `jaxheads guard train` or `jaxheads judge train` run wrote, its adapter/ folder, "
                            "or 'builtin'")
        again = "train the adapter again or copy its folder anew"
        try:
            meta = json.loads((directory / ADAPTER_META).read_text(encoding="utf-8-sig"))
        except (OSError, UnicodeDecodeError, ValueError) as error:
            raise LoadError(f"{directory / ADAPTER_META} cannot be read as JSON ({error}); {again}") from None
        if not isinstance(meta, dict) or meta.get("format") != ADAPTER_FORMAT:
            raise LoadError(f"{directory / ADAPTER_META} is not a jaxheads classifier adapter")
        try:
            tensors = load_file(str(directory / ADAPTER_WEIGHTS))
        except Exception as error:  # safetensors raises its own SafetensorError on a damaged or truncated file
            raise LoadError(f"{directory / ADAPTER_WEIGHTS} cannot be read ({error}); {again}") from None
        try:
            targets = meta["lora"]["targets"]
            missing = [f"{target}.{part}" for target in targets for part in ("a", "b")
                       if f"{target}.{part}" not in tensors]
            if missing:
                raise LoadError(f"{directory / ADAPTER_WEIGHTS} lacks the tensors {', '.join(missing)} that "
                                f"{ADAPTER_META} lists; {again}")
            arrays = {target: {part: tensors[f"{target}.{part}"].astype(np.float32) for part in ("a", "b")}
                      for target in targets}
            return cls(Task.from_dict(meta["task"]), tuple(meta["label_token_ids"]), meta["lora"]["rank"],
                       meta["lora"]["alpha"], arrays, meta["model"], meta["temperature"], meta["threshold"],
                       meta.get("alarm_threshold"), meta.get("info", {}))
        except (KeyError, TypeError) as error:
            raise LoadError(f"{directory / ADAPTER_META} lacks the field {error} (or holds it in another form); "
                            f"{again}") from None

    def check_fits(self, model) -> None:
        """Raises a LoadError naming the differences when `model` is not of the shape the adapter was trained
        for, or its tokenizer gives the label tokens other ids."""
        trained, given = self.model.get("shape", {}), model_shape(model.config)
        differ = [f"{name} {trained.get(name)} -> {given[name]}" for name in SHAPE_FIELDS
                  if trained.get(name) != given[name]]
        shapes = param_table.shapes(model.config)
        for target, pair in ([] if differ else self.arrays.items()):
            if target not in shapes:
                differ.append(f"{target} weights (absent from the model)")
                continue
            fan_in, fan_out = fan_in_out(shapes[target], target)
            wanted = ((shapes[target][0], fan_in), (shapes[target][0], fan_out))
            if (pair["a"].shape[:2], pair["b"].shape[::2]) != wanted:
                differ.append(f"{target} adapter {pair['a'].shape} x {pair['b'].shape} for weight {shapes[target]}")
        if differ:
            raise LoadError(f"this {self.task.name} adapter was trained for {self.model.get('name')!r}, a model of "
                            f"another shape than {model.name!r} ({'; '.join(dict.fromkeys(differ))}); an adapter "
                            "only fits the shape it was trained for: train one for this model with `jaxheads "
                            f"{self.task.name} train --model=...`")
        ids = label_token_ids(model.tokenizer, self.task)
        if ids != tuple(self.label_token_ids):
            raise LoadError(f"{model.name!r}'s tokenizer gives the label tokens {list(self.task.label_tokens)} the ids "
                            f"{list(ids)}, but the adapter was trained with {list(self.label_token_ids)}; the adapter "
                            "belongs to a model with another tokenizer")


@functools.partial(jax.jit, static_argnames="graphdef")
def _label_logits(graphdef, state, input_ids, attention_mask, label_ids):
    """The logits of the label tokens `[B, K]` at the last position of left-padded inputs (the model's forward
    pass, with the LM head applied to that position only)."""
    model = nnx.merge(graphdef, state)
    mask = attention_mask.astype(bool)
    h = model.run_layers(model.embed_tokens(input_ids), positions_from_mask(mask),
                         prompt_attention_mask(model.config, mask)).h
    return model.logits(model.final_hidden(h[:, -1]))[:, label_ids]


class Classifier:
    """A model (the adapter merged into its weights) that scores inputs against a task's labels in one forward
    pass each. `temperature` scales the label logits; `threshold` and `alarm_threshold` (None = plain argmax) are
    the decision rule's bars on P(task.negative) and P(task.alarm)."""

    def __init__(self, model, task: Task, temperature: float = 1.0, threshold: float | None = None,
                 adapter: Adapter | None = None, alarm_threshold: float | None = None):
        if not temperature > 0:
            raise JaxheadsError(f"the temperature must be > 0, got {temperature}")
        if threshold is not None and (task.negative is None or not 0 <= threshold <= 1):
            raise JaxheadsError(f"a threshold needs a task with a negative label and a value in [0, 1], got "
                                f"{threshold} for {task.negative!r}")
        self.model, self.task, self.adapter = model, task, adapter
        if alarm_threshold is not None and (task.alarm is None or not 0 <= alarm_threshold <= 1):
            raise JaxheadsError(f"an alarm threshold needs a task with an alarm label and a value in [0, 1], got "
                                f"{alarm_threshold} for {task.alarm!r}")
        self.temperature, self.threshold, self.alarm_threshold = temperature, threshold, alarm_threshold
        self.label_ids = label_token_ids(model.tokenizer, task)
        self._placed: dict[Any, tuple] = {}

    @classmethod
    def from_adapter(cls, model, adapter: Adapter) -> "Classifier":
        """`model` with the adapter's LoRA merged into its weights, and the adapter's calibration."""
        adapter.check_fits(model)
        return cls(merged_model(model, adapter.lora, adapter.arrays), adapter.task, adapter.temperature,
                   adapter.threshold, adapter, adapter.alarm_threshold)

    def _split(self, mesh: Mesh | None):
        key = None if mesh is None else id(mesh)
        if key not in self._placed:
            self._placed = {key: nnx.split(self.model.module) if mesh is None else split_on_mesh(self.model.module,
                                                                                               mesh)}
        return self._placed[key]

    def encode(self, items: Sequence[str | dict]) -> list[list[int]]:
        """Token ids of each item's input text; an input longer than the model's context is an error."""
        rows = [tokens.encode(self.model.tokenizer, self.task.format(item)) for item in items]
        context = self.model.config.max_position_embeddings
        too_long = [i for i, row in enumerate(rows) if len(row) > context]
        if too_long:
            raise DataError(f"{len(too_long)} inputs are longer than the model's context of {context} tokens with the "
                            f"classifier's template, at positions (0-based) {too_long[:10]}; shorten them")
        return rows

    def label_logits(self, items: Sequence[str | dict], batch_size: int = 32, mesh: Mesh | None = None) -> np.ndarray:
        """Raw label logits `[P, K]`, in label order. Inputs are sorted by length and run `batch_size` at a time
        (padded to `tokens.CLASSIFIER_PAD_MULTIPLE` tokens, batches filled up to `batch_size` rows so that their shapes repeat); on a
        `mesh` rows are split over `data` and the weights over `model`."""
        items = list(items)
        if not items:
            raise DataError("no inputs to classify; the dataset is empty")
        if batch_size < 1:
            raise JaxheadsError(f"batch_size must be at least 1, got {batch_size}")
        rows = self.encode(items)
        row_multiple = 1 if mesh is None else mesh.shape[DATA]
        batch_size = tokens.batch_size_for(batch_size, row_multiple)
        order = np.argsort([len(row) for row in rows], kind="stable")
        graphdef, state = self._split(mesh)
        label_ids = jnp.asarray(self.label_ids, jnp.int32)
        pad = tokens.pad_id(self.model.tokenizer)
        logits = np.zeros((len(rows), len(self.label_ids)), np.float32)
        for start in range(0, len(rows), batch_size):
            chosen = order[start:start + batch_size]
            chunk = tokens.fill([rows[i] for i in chosen],
                                tokens.batch_rows(len(chosen), len(rows), batch_size, row_multiple))
            ids, mask = tokens.pad_left(chunk, pad, tokens.CLASSIFIER_PAD_MULTIPLE)
            if mesh is not None:
                ids, mask = place_rows((ids, mask), mesh)
            logits[chosen] = to_host(_label_logits(graphdef, state, ids, mask, label_ids))[:len(chosen)]
        return logits

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """softmax(logits / temperature) over the labels, float64 `[P, K]`."""
        return softmax(np.asarray(logits, np.float64) / self.temperature)

    def decide(self, probs: np.ndarray) -> list[str]:
        """Each row's label by the decision rule (see the module docstring)."""
        return decide(probs, self.task, self.threshold, self.alarm_threshold)

    def classify(self, items: Sequence[str | dict], batch_size: int = 32,
                 mesh: Mesh | None = None) -> tuple[list[str], np.ndarray]:
        """(labels, probabilities `[P, K]`) of `items`."""
        probs = self.probabilities(self.label_logits(items, batch_size, mesh))
        return self.decide(probs), probs


def merged_model(model, lora, arrays: dict):
    """A `Model` like `model` with the LoRA `arrays` added to its weights (in the model's dtype)."""
    names = param_table.shapes(model.config)
    weights = {name: getattr(model.module, name)[...] for name in names}
    dtype = weights["embed"].dtype
    merged = merge(lora, weights, {target: {part: jnp.asarray(array) for part, array in pair.items()}
                                   for target, pair in arrays.items()})
    return dataclasses.replace(model, module=module_from_arrays(model.config, merged, dtype))

def decide(probs: np.ndarray, task: Task, threshold: float | None,
           alarm_threshold: float | None = None) -> list[str]:
    """Labels by the decision rule (module docstring): `task.negative` when its probability exceeds `threshold`
    (without one: when it is the most probable), else the most probable other label, where `task.alarm` also
    needs a probability above `alarm_threshold` (else the most probable label left)."""
    probs = np.asarray(probs, np.float64)
    negative = None if task.negative is None else task.labels.index(task.negative)
    alarm = None if task.alarm is None or alarm_threshold is None else task.labels.index(task.alarm)
    chosen = []
    for row in probs:
        if negative is not None and threshold is not None:
            if row[negative] > threshold:
                chosen.append(negative)
                continue
            row = np.where(np.arange(len(row)) == negative, -np.inf, row)
        best = int(np.argmax(row))
        if best == alarm and row[alarm] <= alarm_threshold:
            best = int(np.argmax(np.where(np.arange(len(row)) == alarm, -np.inf, row)))
        chosen.append(best)
    return [task.labels[i] for i in chosen]


def calibration_split(rows: Sequence[LabelledPrompt], every: int) -> tuple[list[LabelledPrompt], list[LabelledPrompt]]:
    """(train, calibration): within each (label, group), in order, every `every`-th prompt (positions every - 1,
    2 * every - 1, ...) goes to calibration."""
    if every < 2:
        raise JaxheadsError(f"calibration_every must be at least 2, got {every}")
    seen: dict[tuple, int] = {}
    train, calibration = [], []
    for row in rows:
        position = seen.get((row.label, row.group), 0)
        seen[(row.label, row.group)] = position + 1
        (calibration if position % every == every - 1 else train).append(row)
    return train, calibration


def examples(tokenizer, task: Task, items: Sequence[str | dict], labels: Sequence[str], max_length: int):
    """Training examples: the formatted input's tokens followed by the label's token, with the loss on that one
    token (`prompt_length` = the input's length)."""
    ids = dict(zip(task.labels, label_token_ids(tokenizer, task)))
    made = []
    for item, label in zip(items, labels):
        prompt = tokens.encode(tokenizer, task.format(item))
        if len(prompt) + 1 > max_length:
            raise DataError(f"the classifier input for {str(item)[:60]!r} has {len(prompt)} tokens, more than "
                            f"max_length={max_length} allows with its label; raise max_length or shorten it")
        made.append(Example(tuple(prompt + [ids[label]]), len(prompt)))
    return made


def calibrate(logits: np.ndarray, labels: Sequence[str], task: Task, risk_recall_target: float,
              false_alarm_target: float | None = None) -> dict:
    """Temperature (by NLL), threshold (for `risk_recall_target` on the risky inputs) and, with
    `false_alarm_target`, alarm threshold (at most that share of the negative inputs labelled `alarm`) from
    calibration logits, with the calibration metrics before (argmax, T = 1) and after."""
    index = [task.labels.index(label) for label in labels]
    temperature = fit_temperature(logits, index)
    probs = softmax(np.asarray(logits, np.float64) / temperature)
    threshold = alarm_threshold = None
    if task.negative is not None:
        s = task.labels.index(task.negative)
        threshold = choose_threshold([p[s] for p, i in zip(probs, index) if i != s], risk_recall_target)
        if task.alarm is not None and false_alarm_target is not None:
            a = task.labels.index(task.alarm)
            negatives = [p for p, i in zip(probs, index) if i == s]
            flagged = [p[a] for p, label in zip(negatives, decide(negatives, task, threshold)) if label == task.alarm]
            alarm_threshold = choose_alarm_threshold(flagged, len(negatives), false_alarm_target)
    return {"n": len(labels), "temperature": temperature, "threshold": threshold, "alarm_threshold": alarm_threshold,
            "risk_recall_target": risk_recall_target if task.negative is not None else None,
            "false_alarm_target": false_alarm_target if alarm_threshold is not None else None,
            "nll_before": nll(logits, index, 1.0), "nll_after": nll(logits, index, temperature),
            "metrics_argmax": metrics(labels, decide(softmax(np.asarray(logits, np.float64)), task, None), task),
            "metrics": metrics(labels, decide(probs, task, threshold, alarm_threshold), task)}


def train_classifier(model, task: Task, train_items: Sequence[str | dict], train_labels: Sequence[str],
                     calibration_items: Sequence[str | dict], calibration_labels: Sequence[str], config, out_dir,
                     risk_recall_target: float = 0.99, false_alarm_target: float | None = None,
                     model_spec: str = "", batch_size: int = 32,
                     mesh: Mesh | None = None, on_step: Callable[[int, dict], None] | None = None):
    """Fine-tunes `model` with LoRA (`config`: a `jaxheads.train.TrainConfig` with `lora_rank >= 1`) on the
    training items, calibrates on the calibration items (`calibrate`), and returns `(classifier, adapter,
    train_result)`.
    Checkpoints and metrics go to `out_dir` (an interrupted run resumes)."""
    if config.lora is None:
        raise JaxheadsError("a classifier is trained as a LoRA adapter; set lora_rank >= 1")
    if not calibration_items:
        raise DataError("calibration needs at least one input that is not trained on")
    made = examples(model.tokenizer, task, train_items, train_labels, config.max_length)
    result = train(model, made, config, out_dir, mesh=mesh, on_step=on_step)
    # Calibrated as stored: the adapter's arrays at ADAPTER_DTYPE precision, merged into the model.
    stored = {target: {part: np.asarray(array, ADAPTER_DTYPE).astype(np.float32) for part, array in pair.items()}
              for target, pair in result.adapters.items()}
    adapter = Adapter(task, label_token_ids(model.tokenizer, task), config.lora_rank, config.lora_alpha, stored,
                      {"name": model.name, "spec": model_spec, "shape": model_shape(model.config)},
                      info={"steps": result.step, "train_examples": len(made)})
    classifier = Classifier.from_adapter(model, adapter)
    logits = classifier.label_logits(calibration_items, batch_size, mesh)
    calibration = calibrate(logits, calibration_labels, task, risk_recall_target, false_alarm_target)
    classifier.temperature = adapter.temperature = calibration["temperature"]
    classifier.threshold = adapter.threshold = calibration["threshold"]
    classifier.alarm_threshold = adapter.alarm_threshold = calibration["alarm_threshold"]
    adapter.info["calibration"] = calibration
    return classifier, adapter, result
