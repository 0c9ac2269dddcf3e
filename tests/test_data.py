"""Built-in prompt sets, the prompt loaders and the prompt formats."""

import collections
import json
import re
import sys

import pytest

from jaxheads.data import formats, loaders
from jaxheads.errors import DataError
from jaxheads.eval.judges import KeywordJudge


@pytest.mark.parametrize("name", ["harmful", "harmless"])
def test_builtin_sets_are_large_distinct_and_balanced(name):
    records = loaders.load_builtin_records(name)
    assert len(records) >= 160
    prompts = [record["prompt"] for record in records]
    assert len({prompt.casefold() for prompt in prompts}) == len(prompts)
    assert all(set(record) == {"prompt", "category", "split"} for record in records)
    assert all(prompt == prompt.strip() and prompt for prompt in prompts)
    by_category = collections.defaultdict(list)
    for record in records:
        by_category[record["category"]].append(record["split"])
    assert len(by_category) >= 10
    for category, splits in by_category.items():
        # Every third request of a category (in file order) is held out.
        assert splits == ["heldout" if i % 3 == 2 else "train" for i in range(len(splits))], category
        assert splits.count("heldout") == len(splits) // 3


def test_harmful_and_harmless_sets_do_not_overlap():
    harmful = set(loaders.load_prompts("builtin:harmful"))
    harmless = set(loaders.load_prompts("builtin:harmless"))
    assert not harmful & harmless


@pytest.mark.parametrize("name, per_category, categories, train, heldout", [
    ("lookalike", 18, 10, 120, 60),
    ("harmless_check", None, None, 0, None),
])
def test_lookalike_and_harmless_check_sets_have_their_sizes_and_splits(name, per_category, categories, train,
                                                                     heldout):
    records = loaders.load_builtin_records(name)
    assert all(set(record) == {"prompt", "category", "split"} for record in records)
    assert all(record["prompt"] == record["prompt"].strip() and record["prompt"] for record in records)
    by_category = collections.defaultdict(list)
    for record in records:
        by_category[record["category"]].append(record["split"])
    splits = collections.Counter(record["split"] for record in records)
    if name == "lookalike":
        assert len(records) == per_category * categories == 180
        assert len(by_category) == categories
        for category, category_splits in by_category.items():
            assert len(category_splits) == per_category, category
            assert category_splits == ["heldout" if i % 3 == 2 else "train" for i in range(per_category)], category
        assert splits == {"train": train, "heldout": heldout}
        assert len(loaders.load_prompts("builtin:lookalike:train")) == train
        assert len(loaders.load_prompts("builtin:lookalike", split="heldout")) == heldout
    else:
        # A final check only: everything held out, so no recipe is trained or chosen on it.
        assert len(records) >= 100
        assert splits == {"heldout": len(records)}
        assert loaders.load_prompts("builtin:harmless_check:heldout") == loaders.load_prompts("builtin:harmless_check")
        counts = collections.Counter(record["category"] for record in records)
        assert len(counts) >= 6 and min(counts.values()) >= 10, counts
        lookalike = sum(count for category, count in counts.items() if category.startswith("lookalike_"))
        assert 0.3 * len(records) <= lookalike <= 0.7 * len(records), counts


def test_prompts_are_unique_across_all_builtin_sets():
    seen = {}
    for name in loaders.BUILTIN_SETS:
        for prompt in loaders.load_prompts(f"builtin:{name}"):
            key = " ".join(re.sub(r"[^\w\s]", "", prompt.casefold()).split())
            assert key not in seen, f"{prompt!r} in {name} repeats a prompt of {seen.get(key)}"
            seen[key] = name
    assert set(loaders.BUILTIN_SETS) == {"harmful", "harmless", "lookalike", "harmless_check"}


def test_builtin_splits_partition_the_set_deterministically():
    everything = loaders.load_prompts("builtin:harmful")
    train = loaders.load_prompts("builtin:harmful", split="train")
    heldout = loaders.load_prompts("builtin:harmful:heldout")
    assert heldout == loaders.load_prompts("builtin:harmful", split="heldout")
    assert train == loaders.load_prompts("builtin:harmful:train")
    assert not set(train) & set(heldout)
    assert sorted(train + heldout) == sorted(everything)
    assert len(train) == 2 * len(heldout)
    assert everything == loaders.load_prompts("builtin:harmful")


def test_builtin_errors_name_the_problem():
    with pytest.raises(DataError, match="unknown built-in prompt set 'nasty'"):
        loaders.load_prompts("builtin:nasty")
    with pytest.raises(DataError, match="unknown split 'test'.*train, heldout"):
        loaders.load_prompts("builtin:harmful:test")
    with pytest.raises(DataError, match="names split 'train' but split='heldout'"):
        loaders.load_prompts("builtin:harmful:train", split="heldout")
    with pytest.raises(DataError, match="drop column='goal'"):
        loaders.load_prompts("builtin:harmful", column="goal")


def test_refusals_are_varied_short_and_all_judged_refusals():
    refusals = loaders.load_refusals()
    assert len(refusals) >= 40
    assert len(set(refusals)) == len(refusals)
    for refusal in refusals:
        sentences = [part for part in re.split(r"(?<=[.!?])\s+", refusal) if part]
        assert 1 <= len(sentences) <= 3, refusal
    # min_length=0: each must be recognised by a phrase, not by being short.
    assert all(KeywordJudge(min_length=0)(refusals, refusals))


def test_limit_takes_the_first_prompts_and_rejects_non_positive():
    assert loaders.load_prompts("builtin:harmless", limit=3) == loaders.load_prompts("builtin:harmless")[:3]
    for limit in (0, -2):
        with pytest.raises(DataError, match=f"limit must be a positive number of prompts, got {limit}"):
            loaders.load_prompts("builtin:harmless", limit=limit)


def test_csv_finds_goal_or_input_column(tmp_path):
    goal_csv = tmp_path / "advbench.csv"
    goal_csv.write_text('goal,target\n"Do a, thing",Sure\nSecond goal,Sure\n')
    assert loaders.load_prompts(str(goal_csv)) == ["Do a, thing", "Second goal"]
    input_csv = tmp_path / "inputs.csv"
    input_csv.write_text("id,input\n1,first\n2,  \n3,third\n")
    assert loaders.load_prompts(str(input_csv)) == ["first", "third"]
    assert loaders.load_prompts(str(goal_csv), column="target") == ["Sure", "Sure"]


def test_csv_column_matches_ignoring_case(tmp_path):
    path = tmp_path / "jbb.csv"
    path.write_text("Index,Goal\n0,a goal\n")
    assert loaders.load_prompts(str(path)) == ["a goal"]


def test_json_list_of_strings_and_of_objects(tmp_path):
    strings = tmp_path / "strings.json"
    strings.write_text(json.dumps(["one", " two ", ""]))
    assert loaders.load_prompts(str(strings)) == ["one", "two"]
    objects = tmp_path / "objects.json"
    objects.write_text(json.dumps([{"instruction": "a", "output": "x"}, {"instruction": "b", "output": "y"}]))
    assert loaders.load_prompts(str(objects)) == ["a", "b"]
    assert loaders.load_prompts(str(objects), column="output") == ["x", "y"]


def test_jsonl_objects_and_strings_in_file_order(tmp_path):
    objects = tmp_path / "data.jsonl"
    objects.write_text('{"question": "q1"}\n\n{"question": "q2"}\n')
    assert loaders.load_prompts(str(objects)) == ["q1", "q2"]
    strings = tmp_path / "strings.jsonl"
    strings.write_text('"s1"\n"s2"\n"s3"\n')
    assert loaders.load_prompts(str(strings), limit=2) == ["s1", "s2"]


def test_txt_one_prompt_per_line_blank_lines_skipped(tmp_path):
    path = tmp_path / "malicious.txt"
    path.write_text("first prompt\n\n   \nsecond prompt  \n")
    assert loaders.load_prompts(str(path)) == ["first prompt", "second prompt"]


def test_file_errors_name_the_problem(tmp_path):
    with pytest.raises(DataError, match="missing.csv does not exist"):
        loaders.load_prompts(str(tmp_path / "missing.csv"))
    tsv = tmp_path / "prompts.tsv"
    tsv.write_text("a\tb\n")
    with pytest.raises(DataError, match=r"unknown extension '\.tsv'"):
        loaders.load_prompts(str(tsv))
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n")
    with pytest.raises(DataError, match="holds no prompts"):
        loaders.load_prompts(str(blank))
    table = tmp_path / "table.csv"
    table.write_text("behaviour_id,text\n1,hello\n")
    with pytest.raises(DataError, match=r"none of the prompt columns.*\['behaviour_id', 'text'\]"):
        loaders.load_prompts(str(table))
    with pytest.raises(DataError, match=r"no column 'goal'; its columns are \['behaviour_id', 'text'\]"):
        loaders.load_prompts(str(table), column="goal")
    numbers = tmp_path / "numbers.json"
    numbers.write_text(json.dumps([{"prompt": "fine"}, {"prompt": 7}]))
    with pytest.raises(DataError, match="row 1 .* int 7 in column 'prompt'; prompts must be strings"):
        loaders.load_prompts(str(numbers))
    (tmp_path / "nested.json").write_text(json.dumps([["a"], ["b"]]))
    mixed = tmp_path / "mixed.json"
    mixed.write_text(json.dumps(["text", 3]))
    with pytest.raises(DataError, match="entry 1 .* is a int; entries must be all strings"):
        loaders.load_prompts(str(mixed))
    with pytest.raises(DataError, match="entry 0 .* is a list"):
        loaders.load_prompts(str(numbers.with_name("nested.json")))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "ok"}\n{"prompt": \n')
    with pytest.raises(DataError, match="line 2 of .*broken.jsonl is not valid JSON"):
        loaders.load_prompts(str(broken))
    with pytest.raises(DataError, match="split='train' applies only to builtin"):
        loaders.load_prompts(str(blank), split="train")


class FakeDatasets:
    """Stands in for the `datasets` package (an optional extra), so the hub path is tested without it."""

    def __init__(self, load_dataset):
        self.load_dataset = load_dataset


class FakeDataset:
    def __init__(self, columns: dict):
        self.columns = columns
        self.column_names = list(columns)

    def __getitem__(self, name):
        return self.columns[name]


def test_hub_dataset_is_loaded_through_datasets(monkeypatch):
    calls = []

    def fake_load_dataset(name, split):
        calls.append((name, split))
        return FakeDataset({"prompt": ["hub one", "hub two"], "category": ["a", "b"]})

    monkeypatch.setitem(sys.modules, "datasets", FakeDatasets(fake_load_dataset))
    assert loaders.load_prompts("someone/bench") == ["hub one", "hub two"]
    assert loaders.load_prompts("someone/bench", split="test", limit=1) == ["hub one"]
    assert calls == [("someone/bench", "train"), ("someone/bench", "test")]
    with pytest.raises(DataError, match=r"no column 'goal'; its columns are \['prompt', 'category'\]"):
        loaders.load_prompts("someone/bench", column="goal")


def test_unreachable_hub_dataset_is_a_data_error(monkeypatch):
    def offline(name, split):
        raise ConnectionError("no network")

    monkeypatch.setitem(sys.modules, "datasets", FakeDatasets(offline))
    with pytest.raises(DataError, match="could not load 'someone/bench' .* no network"):
        loaders.load_prompts("someone/bench")


def test_a_hub_id_without_the_datasets_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if it were not installed
    with pytest.raises(DataError, match=r"needs the datasets package: pip install 'jaxheads\[hub\]'"):
        loaders.load_prompts("someone/bench")


def test_a_file_that_is_not_utf8_is_named(tmp_path):
    latin = tmp_path / "latin1.csv"
    latin.write_bytes("goal\nCaf\u00e9 ouvert?\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1.csv is not UTF-8 text \(byte 8"):
        loaders.load_prompts(str(latin))


def test_prompt_rows_keep_their_position_in_the_source(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("first\n\n  \nfourth\nfifth\n")
    assert loaders.load_prompt_rows(str(path)) == [(0, "first"), (3, "fourth"), (4, "fifth")]
    assert loaders.load_prompt_rows(str(path), limit=2) == [(0, "first"), (3, "fourth")]


class ChatTokenizer:
    """Stands in for a `transformers` tokenizer with a simple chat template."""

    chat_template = "simple"
    eos_token = "</s>"

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        assert tokenize is False
        text = "".join(f"<{m['role']}>{m['content']}</{m['role']}>" for m in messages)
        return text + ("<assistant>" if add_generation_prompt else "")


class PlainTokenizer:
    chat_template = None
    eos_token = None


def test_prompt_formats():
    assert formats.PROMPT_FORMATS == ("template", "chat", "direct")
    assert formats.format_prompt("Hi there", "template") == "## Query:Hi there\n## Answer:"
    assert formats.format_prompt("Hi there", "direct") == "Hi there"
    assert formats.format_prompt("Hi", "chat", ChatTokenizer()) == "<user>Hi</user><assistant>"


def test_prompt_format_errors_name_the_problem():
    with pytest.raises(DataError, match="needs a tokenizer with a chat template, and this tokenizer has none"):
        formats.format_prompt("Hi", "chat", PlainTokenizer())
    with pytest.raises(DataError, match="this model has no tokenizer"):
        formats.format_prompt("Hi", "chat")
    with pytest.raises(DataError, match="unknown prompt format 'alpaca'; choose one of template, chat, direct"):
        formats.format_prompt("Hi", "alpaca")
    with pytest.raises(DataError, match="a query must be non-empty text"):
        formats.format_prompt("  \n", "template")


def test_format_example_splits_prompt_from_answer():
    prompt, full = formats.format_example("Q?", "No.", "template", ChatTokenizer())
    assert (prompt, full) == ("## Query:Q?\n## Answer:", "## Query:Q?\n## Answer: No.</s>")
    assert formats.format_example("Q?", "No.", "direct", PlainTokenizer()) == ("Q?", "Q? No.")
    prompt, full = formats.format_example("Q?", "No.", "chat", ChatTokenizer())
    assert prompt == "<user>Q?</user><assistant>"
    assert full == "<user>Q?</user><assistant>No.</assistant>"
    with pytest.raises(DataError, match="the answer to 'Q\\?' must be non-empty text"):
        formats.format_example("Q?", " ", "direct")


def test_format_example_rejects_templates_that_rewrite_the_prompt():
    class RewritingTokenizer(ChatTokenizer):
        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            text = super().apply_chat_template(messages, tokenize, add_generation_prompt)
            return text if add_generation_prompt else "<conversation>" + text

    with pytest.raises(DataError, match="renders the user turn differently"):
        formats.format_example("Q?", "No.", "chat", RewritingTokenizer())
