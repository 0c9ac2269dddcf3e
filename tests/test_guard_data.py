"""The built-in guard set (jaxheads/data/guard.jsonl): four tiers, a fixed split, no repeats of the other sets.

The taxonomy and the split rule are in docs/guard.md.
"""

import collections
import difflib
import importlib.resources
import json
import re

import pytest

from jaxheads.data import loaders

TIERS = ("safe", "conditionally_safe", "focused_attention", "unsafe")
KEYS = {"prompt", "tier", "category", "split"}
MIN_PER_TIER = 160
# Two prompts count as near repeats when their normalised texts match this closely (difflib ratio) or share
# this share of their words; the closest pairs in the sets today are shared sentence frames such as "What is
# the difference between X and Y?" (ratio about 0.8, word overlap about 0.6).
NEAR_RATIO = 0.85
NEAR_WORDS = 0.7


def _guard_lines() -> list[str]:
    text = importlib.resources.files("jaxheads.data").joinpath("guard.jsonl").read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def records():
    return [json.loads(line) for line in _guard_lines()]


def _normalise(prompt: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", prompt.casefold()))


def test_every_line_has_exactly_the_four_keys_with_valid_values(records):
    assert len(records) == len(_guard_lines())
    for number, record in enumerate(records, start=1):
        assert set(record) == KEYS, f"line {number}: keys {sorted(record)}"
        assert record["tier"] in TIERS, f"line {number}: tier {record['tier']!r}"
        assert record["split"] in loaders.SPLITS, f"line {number}: split {record['split']!r}"
        assert isinstance(record["prompt"], str) and record["prompt"] == record["prompt"].strip()
        assert len(record["prompt"]) >= 10, f"line {number}: prompt too short"
        assert re.fullmatch(r"[a-z][a-z_]*", record["category"]), f"line {number}: category {record['category']!r}"


def test_every_tier_is_large_and_has_several_categories(records):
    counts = collections.Counter(record["tier"] for record in records)
    for tier in TIERS:
        assert counts[tier] >= MIN_PER_TIER, f"{tier}: {counts[tier]} prompts"
        categories = {record["category"] for record in records if record["tier"] == tier}
        assert len(categories) >= 10, f"{tier}: {len(categories)} categories"


def test_split_rule_holds_per_tier_and_category(records):
    by_group = collections.defaultdict(list)
    for record in records:
        by_group[record["tier"], record["category"]].append(record["split"])
    for group, splits in by_group.items():
        # In file order, positions 3, 7, 11, ... (0-based) of a (tier, category) are held out.
        assert splits == ["heldout" if i % 4 == 3 else "train" for i in range(len(splits))], group


def test_at_least_a_quarter_of_each_tier_is_held_out(records):
    for tier in TIERS:
        splits = [record["split"] for record in records if record["tier"] == tier]
        assert splits.count("heldout") * 4 >= len(splits), tier


def test_prompts_are_unique_within_the_guard_set(records):
    seen = {}
    for record in records:
        key = _normalise(record["prompt"])
        assert key not in seen, f"{record['prompt']!r} repeats {seen[key]!r}"
        seen[key] = record["prompt"]


def test_no_prompt_repeats_or_nearly_repeats_another_set_or_another_guard_prompt(records):
    guard = [record["prompt"] for record in records]
    others = [record["prompt"] for name in loaders.BUILTIN_SETS if name != "guard"
              for record in loaders.load_builtin_records(name)]
    other_keys = {_normalise(prompt) for prompt in others}
    for prompt in guard:
        assert _normalise(prompt) not in other_keys, f"{prompt!r} is also in another built-in set"

    texts = [_normalise(prompt) for prompt in guard + others]
    words = [set(text.split()) for text in texts]
    near = []
    # Each guard prompt against every later prompt: the rest of the guard set, then the other built-in sets.
    for j in range(len(guard)):
        matcher = difflib.SequenceMatcher(None, b=texts[j], autojunk=False)
        for i in range(j + 1, len(texts)):
            overlap = len(words[i] & words[j]) / len(words[i] | words[j])
            if overlap >= NEAR_WORDS:
                near.append(((guard + others)[j], (guard + others)[i]))
            elif overlap >= 0.25:
                # Texts this close character by character share far more than a quarter of their words, so
                # the slower character-level ratio is only computed past that cheap filter.
                matcher.set_seq1(texts[i])
                if (matcher.real_quick_ratio() >= NEAR_RATIO and matcher.quick_ratio() >= NEAR_RATIO
                        and matcher.ratio() >= NEAR_RATIO):
                    near.append(((guard + others)[j], (guard + others)[i]))
    assert not near, f"near repeats: {near[:5]}"
