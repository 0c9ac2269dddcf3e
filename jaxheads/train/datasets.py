"""Training data built by the project: refusal targets, a model's own answers (cached), an arithmetic word-problem
task with exact answers, and the benign/harmful mixture of the harmful fine-tuning protocol (docs/methods.md §9)."""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Sequence

import numpy as np
from tqdm import tqdm

from jaxheads.data.formats import format_prompt
from jaxheads.data.loaders import load_refusals
from jaxheads.errors import DataError
from jaxheads.generation import generate
from jaxheads.io import JsonlLog, content_hash, without_optional

SENTENCE_END = re.compile(r"[.!?](?=\s|$)|\n")


def refusal_answers(queries: Sequence[str], seed: int = 0) -> list[str]:
    """One built-in refusal per query, drawn with a seeded generator."""
    refusals = load_refusals()
    rng = np.random.default_rng(seed)
    return [refusals[i] for i in rng.integers(0, len(refusals), len(queries))]


def trim_to_sentence(text: str) -> str:
    """`text` cut after its last complete sentence (unchanged when it has none)."""
    text = text.strip()  # a leading newline would otherwise count as a sentence end and leave nothing
    ends = [match.end() for match in SENTENCE_END.finditer(text)]
    return text[:ends[-1]].strip() if ends else text


def model_answers(model, queries: Sequence[str], prompt_format: str, cache_path: str | os.PathLike,
                  max_new_tokens: int = 96, batch_size: int = 16, progress: bool = False) -> list[str]:
    """The model's greedy answers to `queries` in `prompt_format`, stripped, and cut to their last complete
    sentence when generation stopped at `max_new_tokens`.

    Answers are appended to the JSONL file `cache_path` as they are made and reused from it (keyed by the model's
    files (`Model.fingerprint`), format, length and query), so an interrupted run does not generate them again and
    a model retrained at the same path does not reuse the old model's answers.
    """
    log = JsonlLog(cache_path)
    settings = {"model": content_hash({"name": model.name, **without_optional(model.fingerprint)}), "prompt_format": prompt_format,
                "max_new_tokens": max_new_tokens}
    cached = {record["query"]: record["answer"] for record in log.read()
              if {key: record.get(key) for key in settings} == settings}
    missing = [query for query in dict.fromkeys(queries) if query not in cached]
    starts = range(0, len(missing), batch_size)
    if progress and missing:
        starts = tqdm(starts, desc=f"{model.name} answers", unit=f"batch of {batch_size}")
    for start in starts:
        chunk = missing[start:start + batch_size]
        prompts = [format_prompt(query, prompt_format, model.tokenizer) for query in chunk]
        generation = generate(model, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
        for query, text, tokens in zip(chunk, generation.texts, generation.tokens):
            answer = trim_to_sentence(text) if len(tokens) >= max_new_tokens else text.strip()
            log.append({**settings, "query": query, "answer": answer})
            cached[query] = answer
    return [cached[query] for query in queries]


@dataclasses.dataclass(frozen=True)
class Problem:
    """An arithmetic word problem, its worked answer text, and the exact integer result."""

    question: str
    answer: str
    value: int


_NAMES = ("Ava", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hugo", "Iris", "Jonas", "Kemi", "Liam", "Mia",
          "Noah", "Olga", "Priya", "Quinn", "Rosa", "Sami", "Tara")
_ITEMS = ("apples", "books", "marbles", "stickers", "pencils", "cookies", "stamps", "shells", "coins", "cards")


def _problem(rng: np.random.Generator) -> Problem:
    name, item = _NAMES[rng.integers(len(_NAMES))], _ITEMS[rng.integers(len(_ITEMS))]
    kind = rng.integers(4)
    if kind == 0:
        a, b = rng.integers(2, 100, 2)
        question = f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?"
        expression, value = f"{a} + {b}", a + b
    elif kind == 1:
        b, c = rng.integers(1, 80, 2)
        a = b + c
        question = f"{name} had {a} {item} and gave {b} of them away. How many {item} does {name} have left?"
        expression, value = f"{a} - {b}", c
    elif kind == 2:
        a, b = rng.integers(2, 13, 2)
        question = f"A box holds {a} {item}. How many {item} are in {b} boxes?"
        expression, value = f"{a} * {b}", a * b
    else:
        a, b = rng.integers(2, 13, 2)
        question = f"{name} shares {a * b} {item} equally among {b} friends. How many {item} does each friend get?"
        expression, value = f"{a * b} / {b}", a
    return Problem(question, f"{expression} = {value}. The answer is {value}.", int(value))


def arithmetic_problems(count: int, seed: int, exclude: Sequence[Problem] = ()) -> list[Problem]:
    """`count` distinct word problems (addition, subtraction, multiplication, division) from a seeded generator,
    none with the question of a problem in `exclude`."""
    rng = np.random.default_rng(seed)
    seen = {problem.question for problem in exclude}
    problems = []
    while len(problems) < count:
        problem = _problem(rng)
        if problem.question not in seen:
            seen.add(problem.question)
            problems.append(problem)
    return problems


def answer_value(response: str) -> int | None:
    """The integer a response gives: the number after "The answer is", else its last integer."""
    stated = re.search(r"answer is\s*(-?\d+)", response, flags=re.IGNORECASE)
    if stated:
        return int(stated.group(1))
    numbers = re.findall(r"-?\d+", response)
    return int(numbers[-1]) if numbers else None


def arithmetic_accuracy(problems: Sequence[Problem], responses: Sequence[str]) -> float:
    """Share of responses whose stated integer equals the problem's exact result."""
    if len(problems) != len(responses) or not problems:
        raise DataError(f"need one response per problem and at least one problem, got {len(problems)} problems "
                        f"and {len(responses)} responses")
    return float(np.mean([answer_value(response) == problem.value for problem, response in zip(problems, responses)]))


def harmful_mixture(task: Sequence[tuple[str, str]], harmful: Sequence[tuple[str, str]], num_samples: int,
                    harmful_ratio: float, seed: int) -> tuple[list[tuple[str, str]], int]:
    """`num_samples` (query, answer) pairs: round(harmful_ratio · n) harmful pairs (cycling through `harmful` in a
    seeded order when more are needed than there are) and the rest from `task`, shuffled together.
    Returns the pairs and the number of harmful ones."""
    if not 0 <= harmful_ratio <= 1:
        raise DataError(f"harmful_ratio must be in [0, 1], got {harmful_ratio}")
    num_harmful = int(round(harmful_ratio * num_samples))
    if harmful_ratio > 0 and not harmful:
        raise DataError(f"harmful_ratio={harmful_ratio} needs harmful (prompt, answer) samples, but the harmful "
                        "dataset has none; give a dataset with harmful answers or set harmful_ratio=0")
    if harmful_ratio > 0 and num_harmful == 0:
        raise DataError(f"harmful_ratio={harmful_ratio} of {num_samples} samples rounds to 0 harmful samples; "
                        "raise num_samples or harmful_ratio")
    if num_samples - num_harmful > len(task):
        raise DataError(f"{num_samples - num_harmful} task samples needed but only {len(task)} given")
    rng = np.random.default_rng(seed)
    repeats = -(-num_harmful // len(harmful)) if num_harmful else 0
    order = [int(i) for _ in range(repeats) for i in rng.permutation(len(harmful))]
    chosen = [harmful[i] for i in order[:num_harmful]] + list(task[:num_samples - num_harmful])
    return [chosen[i] for i in rng.permutation(len(chosen))], num_harmful
