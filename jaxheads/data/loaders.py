"""Prompt sets from the built-in files, local .csv/.json/.jsonl/.txt files, or `datasets` hub ids.

Built-in sets written for this project (`builtin:NAME`, optionally `:train` / `:heldout`):

- `harmful`: 180 harmful requests, 18 per category in 10 categories; 120 train / 60 heldout.
- `harmless`: 270 harmless requests, 27 per category in 10 categories (the last 9 per category are mostly imperative
  requests, "Write ...", "Make ...", so that the form of a request does not tell harmful from harmless);
  180 train / 90 heldout.
- `lookalike`: 180 harmless requests worded like harmful ones ("kill a process", "shoot a portrait", "butcher a
  chicken", "etymology of 'assassin'"), 18 per category in 10 categories; 120 train / 60 heldout. For training
  and for choosing a recipe, so that harmful-sounding words alone do not draw a refusal.
- `harmless_check`: 120 harmless requests, all heldout, for a final check only (never for training or for choosing
  a recipe): 60 everyday requests in 4 categories and 60 lookalike requests in 5 categories, written apart from
  `harmless` and `lookalike`, mostly with other topics and other harmful-sounding words.

In `harmful`, `harmless` and `lookalike`, every third request of a category in file order (positions 2, 5, 8, ...)
is `heldout` and the rest are `train`.

Labelled sets (`load_labelled`): `builtin:guard` (optionally `:train` / `:heldout`), 672 prompts with one of the
four guard tiers each (docs/guard.md); a .csv/.json/.jsonl file with a `tier` column; or any prompt set whose
prompts all get one tier given with it (`tier=`).

Labelled responses (`load_responses`): `builtin:judge` (optionally `:train` / `:heldout`), 450 (prompt, response)
pairs with one of the four response-judge labels each (docs/judge.md); or a .csv/.json/.jsonl file with `prompt`,
`response` and (optionally) `label` columns; jaxheads' own generations*.jsonl files (query, response) too.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.resources
import json
import os
import re

from jaxheads.data.labels import GUARD_TIERS, JUDGE_LABEL_COLUMN, JUDGE_LABELS, LABEL_COLUMN, RESPONSE_COLUMN
from jaxheads.errors import DataError

BUILTIN_SETS = ("harmful", "harmless", "lookalike", "harmless_check")
LABELLED_SETS = ("guard", "judge")  # built-in sets whose records carry a label too (`tier`, `label`)
SPLITS = ("train", "heldout")
FILE_FORMATS = (".csv", ".json", ".jsonl", ".txt")
# Tried in this order when no column is given; matched exactly first, then ignoring case.
PROMPT_COLUMNS = ("prompt", "instruction", "goal", "input", "question", "behavior")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w-]*$|^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def load_builtin_records(name: str) -> list[dict]:
    """The records (`prompt`, `category`, `split`; and `tier` in LABELLED_SETS) of the built-in set `name`, one of
    BUILTIN_SETS or LABELLED_SETS."""
    if name not in BUILTIN_SETS + LABELLED_SETS:
        raise DataError(f"unknown built-in prompt set {name!r}; choose one of "
                        f"{', '.join(BUILTIN_SETS + LABELLED_SETS)}")
    text = importlib.resources.files("jaxheads.data").joinpath(f"{name}.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def load_refusals() -> list[str]:
    """The built-in refusal answers (one per line of refusals.txt), used as safe targets for alignment."""
    text = importlib.resources.files("jaxheads.data").joinpath("refusals.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def load_prompts(source: str, column: str | None = None, limit: int | None = None,
                 split: str | None = None) -> list[str]:
    """The prompts of `source`, stripped, blank ones skipped, in source order, at most `limit` of them.

    `source` is `builtin:NAME` for NAME in BUILTIN_SETS (optionally `:train` / `:heldout`, or `split=`), a path
    to a .csv/.json/.jsonl/.txt file, or a `datasets` hub id (its `split`, default "train"). For tables and
    objects the prompt column is `column`, else the first of PROMPT_COLUMNS present.
    """
    return [prompt for _, prompt in load_prompt_rows(source, column, limit, split)]


def load_prompt_rows(source: str, column: str | None = None, limit: int | None = None,
                     split: str | None = None) -> list[tuple[int, str]]:
    """As `load_prompts`, each prompt with its 0-based position among the entries of `source` (data rows of a
    table, lines of a .txt file, entries of a JSON list, records of a built-in set or its split), so that a
    problem with a prompt can be reported where the user can find it."""
    if limit is not None and limit <= 0:
        raise DataError(f"limit must be a positive number of prompts, got {limit}; leave it unset to use all")
    if source.startswith("builtin:"):
        if column not in (None, "prompt"):
            raise DataError(f"built-in sets have one prompt column, 'prompt'; drop column={column!r} for {source}")
        prompts = _builtin_prompts(source, split)
    else:
        local = _is_local(source)
        if local and split is not None:
            raise DataError(f"split={split!r} applies only to builtin: sets and hub datasets, not to the file "
                            f"{source}; drop it or split the file yourself")
        prompts = _file_prompts(source, column) if local else _hub_prompts(source, column, split)
    rows = [(index, prompt.strip()) for index, prompt in enumerate(prompts) if prompt.strip()]
    if not rows:
        raise DataError(f"{source} holds no prompts (every entry is empty or blank)")
    return rows[:limit] if limit is not None else rows


def _builtin_prompts(source: str, split: str | None) -> list[str]:
    """Prompts of `builtin:NAME[:SPLIT]`, filtered by the split in the name or the `split` argument."""
    name, _, named_split = source.removeprefix("builtin:").partition(":")
    if named_split and split is not None and named_split != split:
        raise DataError(f"{source} names split {named_split!r} but split={split!r} was also given; give only one")
    split = named_split or split
    if split is not None and split not in SPLITS:
        raise DataError(f"unknown split {split!r} for {source}; choose one of {', '.join(SPLITS)}")
    records = load_builtin_records(name)
    return [record["prompt"] for record in records if split is None or record["split"] == split]


def _is_local(source: str) -> bool:
    """Whether `source` names a local file rather than a hub id: a known suffix, an existing path, or not
    shaped like `name` / `owner/name`."""
    return (os.path.splitext(source)[1].lower() in FILE_FORMATS or os.path.exists(source)
            or not _HUB_ID.match(source))


def _file_prompts(path: str, column: str | None) -> list[str]:
    """Prompts read from a local file, by its suffix."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in FILE_FORMATS:
        raise DataError(f"cannot read prompts from {path}: unknown extension {suffix or '(none)'!r}; use one of "
                        f"{', '.join(FILE_FORMATS)}, a builtin: set or a datasets hub id")
    if not os.path.isfile(path):
        raise DataError(f"prompt file {path} does not exist; check the path (relative paths start at "
                        f"{os.getcwd()})")
    try:
        return _read_file_prompts(path, suffix, column)
    except UnicodeDecodeError as error:
        raise DataError(f"{path} is not UTF-8 text (byte {error.start}: {error.reason}); save it as UTF-8") from error


def _read_file_prompts(path: str, suffix: str, column: str | None) -> list[str]:
    """The prompt entries of an existing local file with a known suffix."""
    with open(path, encoding="utf-8-sig", newline="" if suffix == ".csv" else None) as handle:  # BOM tolerant
        if suffix == ".txt":
            return handle.read().splitlines()
        if suffix == ".csv":
            reader = csv.DictReader(handle)
            rows = list(reader)
            return _column_values(rows, reader.fieldnames or [], column, path)
        if suffix == ".json":
            try:
                entries = json.load(handle)
            except json.JSONDecodeError as error:
                raise DataError(f"{path} is not valid JSON ({error})") from error
            if not isinstance(entries, list):
                raise DataError(f"{path} must hold a JSON list of strings or objects, not a "
                                f"{type(entries).__name__}")
        else:
            entries = []
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    try:
                        entries.append(json.loads(line))
                    except json.JSONDecodeError as error:
                        raise DataError(f"line {number} of {path} is not valid JSON ({error})") from error
    return _entry_prompts(entries, column, path)


def _entry_prompts(entries: list, column: str | None, source: str) -> list[str]:
    """Prompts from JSON entries that are either all strings or all objects."""
    if not entries:
        return []
    kind = str if isinstance(entries[0], str) else dict
    for index, entry in enumerate(entries):
        if not isinstance(entry, kind):
            raise DataError(f"entry {index} of {source} is a {type(entry).__name__}; entries must be all strings "
                            "(the prompts) or all objects with a prompt field")
    if kind is str:
        if column is not None:
            raise DataError(f"{source} holds plain strings, so column={column!r} cannot be used; drop it")
        return entries
    names = list(dict.fromkeys(name for entry in entries for name in entry))
    return _column_values(entries, names, column, source)


def _column_values(rows: list[dict], names: list[str], column: str | None, source: str) -> list[str]:
    """The values of the prompt column of table rows (a row without it is an error)."""
    if not rows:
        return []
    column = _resolve_column(names, column, source)
    for index, row in enumerate(rows):
        if column not in row:
            raise DataError(f"row {index} of {source} has no {column!r} field; every row needs one")
    return _check_strings([row[column] for row in rows], column, source)


def _resolve_column(names: list[str], column: str | None, source: str) -> str:
    """`column` if `names` has it, else (when not given) the first of PROMPT_COLUMNS present, matched exactly
    first and then ignoring case."""
    if column is not None:
        if column not in names:
            raise DataError(f"{source} has no column {column!r}; its columns are {names}")
        return column
    for candidate in PROMPT_COLUMNS:
        if candidate in names:
            return candidate
    lowered = {name.lower(): name for name in names}
    for candidate in PROMPT_COLUMNS:
        if candidate in lowered:
            return lowered[candidate]
    raise DataError(f"{source} has none of the prompt columns {list(PROMPT_COLUMNS)}; its columns are {names}; "
                    "pass column= (--column) to choose one")


def _check_strings(values: list, column: str, source: str) -> list[str]:
    """`values` unchanged if all are strings, else an error naming the first that is not."""
    for index, value in enumerate(values):
        if not isinstance(value, str):
            raise DataError(f"row {index} of {source} has {type(value).__name__} {value!r} in column {column!r}; "
                            "prompts must be strings")
    return values


def _hub_prompts(source: str, column: str | None, split: str | None) -> list[str]:
    """Prompts of the `datasets` hub dataset `source` (split `split`, default "train")."""
    try:
        import datasets
    except ImportError as error:
        raise DataError(f"{source!r} is not a local file, so it is read as a Hugging Face hub dataset, which needs the "
                        "datasets package: pip install 'jaxheads[hub]'") from error
    hub_split = split or "train"
    try:
        dataset = datasets.load_dataset(source, split=hub_split)
    except Exception as error:  # datasets raises many kinds (not found, offline, connection, bad split)
        raise DataError(f"could not load {source!r} (split {hub_split!r}) from the Hugging Face hub: {error}. "
                        f"It is not a local file either; check the dataset id and split, the network, or use "
                        f"a local .csv/.json/.jsonl/.txt file") from error
    label = f"hub dataset {source!r}"
    column = _resolve_column(list(dataset.column_names), column, label)
    return _check_strings(list(dataset[column]), column, label)


@dataclasses.dataclass(frozen=True)
class LabelledPrompt:
    """A prompt with its label (None when the source gives none), its 0-based position in the source (as in
    `load_prompt_rows`) and its group: the category (`group` for the judge set) of a built-in record, else the
    source. A labelled response (`load_responses`) also carries the `response` the label is about."""

    row: int
    prompt: str
    label: str | None
    group: str
    response: str | None = None

    @property
    def item(self) -> str | dict:
        """What a classifier reads: the prompt, or {prompt, response} for a labelled response."""
        return self.prompt if self.response is None else {"prompt": self.prompt, "response": self.response}


def load_labelled(source: str, tier: str | None = None, column: str | None = None, limit: int | None = None,
                  labels: tuple[str, ...] = GUARD_TIERS, required: bool = True,
                  categories: tuple[str, ...] | None = None) -> list[LabelledPrompt]:
    """The prompts of `source` with their labels, one of `labels` (the guard tiers by default).

    `builtin:guard[:train|:heldout]` carries a tier per record; a .csv/.json/.jsonl file may carry one per row in
    a `tier` column; with `tier` every prompt of `source` (any source `load_prompts` reads, hub ids included) gets
    that label. Labels are matched ignoring case, with spaces and hyphens read as underscores ("Conditionally
    Safe" is conditionally_safe); any other value is an error naming it and its row. Without labels the prompts
    come back with label None, or (`required`) it is an error. `categories` keeps only those categories of a
    built-in set (a name it does not have is an error).
    """
    if categories:
        return _of_categories(source, categories, tier, labels, required, limit)
    if tier is not None and tier != "":
        label = normalise_label(tier, labels, "the tier given for the whole set")
        if source.startswith("builtin:") and source.removeprefix("builtin:").partition(":")[0] in LABELLED_SETS:
            raise DataError(f"{source} carries a tier per prompt; drop the tier given for the whole set ({tier!r})")
        return [LabelledPrompt(row, prompt, label, source)
                for row, prompt in load_prompt_rows(source, column=column, limit=limit)]
    name, _, split = source.removeprefix("builtin:").partition(":")
    rows = load_prompt_rows(source, column=column, limit=limit)
    if source.startswith("builtin:") and name in LABELLED_SETS:
        records = [record for record in load_builtin_records(name) if not split or record["split"] == split]
        if name == "judge":
            raise DataError(f"{source} holds labelled responses; read it with load_responses (`jaxheads judge ...`)")
        return [LabelledPrompt(row, prompt, normalise_label(records[row][LABEL_COLUMN], labels,
                                                            f"record {row} of {source}"), records[row]["category"])
                for row, prompt in rows]
    values = _file_labels(source) if _is_local(source) and not source.startswith("builtin:") else None
    if values is None:
        if required:
            raise DataError(f"{source} gives its prompts no tiers (it has no {LABEL_COLUMN!r} column); give the tier "
                            f"of the whole set (--tier, one of {', '.join(labels)}) or add a {LABEL_COLUMN!r} column")
        return [LabelledPrompt(row, prompt, None, source) for row, prompt in rows]
    return [LabelledPrompt(row, prompt, normalise_label(values[row], labels, f"row {row} of {source}"), source)
            for row, prompt in rows]


def normalise_label(value, labels: tuple[str, ...], where: str, kind: str = "tier") -> str:
    """`value` as one of `labels` (case ignored, spaces and hyphens as underscores), else an error naming it."""
    key = re.sub(r"[\s-]+", "_", value.strip()).casefold() if isinstance(value, str) else None
    if key not in labels:
        raise DataError(f"{where} has the {kind} {value!r}, which is not one of {', '.join(labels)}")
    return key


def load_responses(source: str, limit: int | None = None, required: bool = True) -> list[LabelledPrompt]:
    """(prompt, response) pairs of `source` with their response-judge label (one of JUDGE_LABELS), in source order.

    `source` is `builtin:judge` (optionally `:train` / `:heldout`) or a .csv/.json/.jsonl file whose rows have a
    prompt column (`query` when there is one, as in jaxheads' generations*.jsonl, else as `load_prompts` finds it),
    a `response` column and a `label` column. Labels are matched as in
    `load_labelled` ("Harmful compliance" is harmful_compliance); any other value is an error naming it and its
    row, and so is a row without a prompt or a response. Without a `label` column the pairs come back with label
    None, or (`required`) it is an error.
    """
    if limit is not None and limit <= 0:
        raise DataError(f"limit must be a positive number of responses, got {limit}; leave it unset to use all")
    if source.startswith("builtin:"):
        name, _, split = source.removeprefix("builtin:").partition(":")
        if name != "judge":
            raise DataError(f"{source} holds prompts without responses; labelled responses come from builtin:judge "
                            "or a file with prompt, response and label columns")
        if split and split not in SPLITS:
            raise DataError(f"unknown split {split!r} for {source}; choose one of {', '.join(SPLITS)}")
        records = [record for record in load_builtin_records(name) if not split or record["split"] == split]
        rows = [LabelledPrompt(row, record["prompt"], normalise_label(record[JUDGE_LABEL_COLUMN], JUDGE_LABELS,
                                                                      f"record {row} of {source}", "label"),
                               record["group"], record[RESPONSE_COLUMN]) for row, record in enumerate(records)]
    else:
        rows = _file_responses(source, required)
    if not rows:
        raise DataError(f"{source} holds no responses")
    return rows[:limit] if limit is not None else rows


def _file_responses(path: str, required: bool) -> list[LabelledPrompt]:
    """The labelled responses of a local .csv/.json/.jsonl file."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in (".csv", ".json", ".jsonl"):
        raise DataError(f"cannot read responses from {path}: labelled responses come from builtin:judge or a .csv, "
                        f".json or .jsonl file with prompt, response and label columns")
    if not os.path.isfile(path):
        raise DataError(f"response file {path} does not exist; check the path (relative paths start at "
                        f"{os.getcwd()})")
    entries = _file_entries(path, suffix)
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise DataError(f"entry {index} of {path} is a {type(entry).__name__}; every entry needs prompt, "
                            "response and label fields")
    names = list(dict.fromkeys(name for entry in entries for name in entry))
    # jaxheads' own generations*.jsonl hold the request as `query` (their `prompt` is the formatted prompt).
    prompt_column = "query" if "query" in names else _resolve_column(names, None, path) if entries else "prompt"
    labelled = JUDGE_LABEL_COLUMN in names
    if entries and not labelled and required:
        raise DataError(f"{path} gives its responses no labels (it has no {JUDGE_LABEL_COLUMN!r} column, one of "
                        f"{', '.join(JUDGE_LABELS)} per row)")
    rows = []
    for index, entry in enumerate(entries):
        values = {}
        for name, column in (("prompt", prompt_column), ("response", RESPONSE_COLUMN)):
            value = entry.get(column)
            # An empty response is data (a model can say nothing, which is a non-answer); a missing one is not.
            if not isinstance(value, str) or (name == "prompt" and not value.strip()):
                raise DataError(f"row {index} of {path} has no {name} (column {column!r}: {value!r}); every row needs "
                                "a non-empty prompt and a response (which may be empty)")
            values[name] = value.strip()
        label = (normalise_label(entry.get(JUDGE_LABEL_COLUMN), JUDGE_LABELS, f"row {index} of {path}", "label")
                 if labelled else None)
        rows.append(LabelledPrompt(index, values["prompt"], label, path, values["response"]))
    return rows


def _file_entries(path: str, suffix: str) -> list:
    """The entries of a local .csv/.json/.jsonl file (rows, list items, lines), as `load_prompt_rows` counts them."""
    with open(path, encoding="utf-8-sig", newline="" if suffix == ".csv" else None) as handle:  # BOM tolerant
        try:
            if suffix == ".csv":
                return list(csv.DictReader(handle))
            if suffix == ".json":
                entries = json.load(handle)
                if not isinstance(entries, list):
                    raise DataError(f"{path} must hold a JSON list of objects, not a {type(entries).__name__}")
                return entries
            return [json.loads(line) for line in handle if line.strip()]
        except json.JSONDecodeError as error:
            raise DataError(f"{path} is not valid JSON ({error})") from error


def _file_labels(path: str) -> list | None:
    """The `tier` values of a local .csv/.json/.jsonl file's entries (indexed as `load_prompt_rows` counts them;
    None for an entry without one), or None when no entry has that field (or the file holds plain strings)."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in (".csv", ".json", ".jsonl"):
        return None
    entries = _file_entries(path, suffix)
    if not any(isinstance(entry, dict) and LABEL_COLUMN in entry for entry in entries):
        return None
    return [entry.get(LABEL_COLUMN) if isinstance(entry, dict) else None for entry in entries]


def _of_categories(source: str, categories, tier, labels, required, limit) -> list[LabelledPrompt]:
    """The labelled prompts of the built-in `source` in `categories`, at most `limit` of them."""
    name, _, split = source.removeprefix("builtin:").partition(":")
    if not source.startswith("builtin:"):
        raise DataError(f"categories can only be chosen in a built-in set, not in {source}")
    rows = load_labelled(source, tier=tier, labels=labels, required=required)
    records = [record for record in load_builtin_records(name) if not split or record["split"] == split]
    known = sorted({record["category"] for record in records})
    unknown = [category for category in categories if category not in known]
    if unknown:
        raise DataError(f"{source} has no categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)}; its "
                        f"categories are {', '.join(known)}")
    kept = [dataclasses.replace(row, group=records[row.row]["category"]) for row in rows
            if records[row.row]["category"] in categories]
    return kept[:limit] if limit is not None else kept
