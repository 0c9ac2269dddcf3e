"""`jaxheads utility`: what ablating heads costs the model's ordinary abilities. For the first k heads of a set
(Sahara's, from a sahara.json, or a list given with --heads), k = 1..K, next to k random heads (several draws
from the heads not in the set) and the unablated model, it measures

- the perplexity of held-out harmless text: the harmless prompts with the UNABLATED model's own greedy answers
  (generated once, cached in harmless_answers.jsonl), scored on the answer tokens only. It measures how much an
  ablation disturbs the model's own benign behaviour, not how well it models someone else's text;
- the refusal rate on the harmless prompts (greedy responses, `--judge`): 1 - their ASR by a keyword judge, or the
  share a response judge labels refusal;
- the accuracy of greedy answers to held-out built-in arithmetic word problems.

Writes utility.json and utility.png. Each finished setting is appended to utility.partial.jsonl, so an interrupted
run resumes with the next one."""

from __future__ import annotations

import os

import jax.numpy as jnp

from jaxheads import io, plots
from jaxheads.errors import JaxheadsError
from jaxheads.eval import asr, utility
from jaxheads.interventions import ablation_mask, from_mask, parse_heads
from jaxheads.jobs import common
from jaxheads.jobs.evaluate import generation_settings
from jaxheads.jobs.heads import read_head_file
from jaxheads.train import tokenize_examples
from jaxheads.train.datasets import arithmetic_accuracy, arithmetic_problems, model_answers

LOG = "utility.partial.jsonl"
ANSWERS = "harmless_answers.jsonl"
MEASURES = ("perplexity", "refusal_rate", "arithmetic_accuracy")


def chosen_heads(config) -> tuple[list[tuple[int, int]], str]:
    """The head set in order, and where it came from (the sahara.json's path or "--heads")."""
    if bool(config.sahara) == bool(config.heads.strip()):
        raise JaxheadsError("give the heads to ablate either as --sahara=sahara.json or as --heads=layer:head,..., "
                            f"not {'both' if config.sahara else 'neither'}")
    if config.sahara:
        sahara, source = io.read_json(config.sahara), os.path.abspath(config.sahara)
        heads = sahara.get("heads") if isinstance(sahara, dict) else None
        if not isinstance(heads, list) or not all(isinstance(head, list) and len(head) == 2 for head in heads):
            raise JaxheadsError(f"{config.sahara} has no list of [layer, head] pairs under \"heads\"; give the "
                                "sahara.json that jaxheads sahara writes")
        heads = [tuple(int(x) for x in head) for head in heads]
    else:
        heads, source = parse_heads(config.heads), "--heads"
    if not heads:
        raise JaxheadsError(f"the head set of {source} is empty")
    repeated = sorted({head for head in heads if heads.count(head) > 1})
    if repeated:
        raise JaxheadsError(f"the head set of {source} lists {', '.join(map(str, repeated))} more than once")
    return heads, source


def summary(records: list[dict], max_heads: int) -> dict:
    """Per measure, `{"none": value, "chosen": [value for k], "random_mean": [...], "random_std": [...]}`."""
    return {measure: common.setting_summary(records, max_heads, measure) for measure in MEASURES}


def check_config(config) -> None:
    common.check_generation_settings(config)
    common.require_int(config, "random_draws", "problems")
    common.require_int(config, "max_heads", "seed", "problem_seed", minimum=0)
    common.require(config, "harmless", bool(config.harmless), "a prompt source such as builtin:harmless:heldout")


def evaluate_setting(model, heads, data, examples, problems, config, mesh, judge=None) -> dict:
    """The three measures with `heads` ablated."""
    mask = ablation_mask(heads, model.config.num_layers, model.config.num_heads)
    interventions = from_mask(jnp.asarray(mask), config.ablation, config.epsilon) if mask.any() else None
    perplexity = utility.answer_perplexity(model, examples, interventions, batch_size=config.batch_size, mesh=mesh)
    refusals = asr.evaluate(model, data.queries, data.prompts, heads, kind=config.ablation, epsilon=config.epsilon,
                            judge=judge, max_new_tokens=config.max_new_tokens, batch_size=config.batch_size,
                            mesh=mesh)
    responses = utility.arithmetic_responses(model, problems, config.prompt_format, interventions,
                                             max_new_tokens=config.max_new_tokens, batch_size=config.batch_size,
                                             mesh=mesh)
    return {"perplexity": perplexity.perplexity, "cross_entropy": perplexity.cross_entropy,
            "refusal_rate": refusals.refusal_rate, "arithmetic_accuracy": arithmetic_accuracy(problems, responses)}


def reference_examples(model, data, config):
    """The harmless prompts with the unablated model's greedy answers (cached), tokenized; prompts whose answer
    is empty are left out. Returns the examples and the number left out."""
    answers = model_answers(model, data.queries, config.prompt_format, os.path.join(config.out, ANSWERS),
                            max_new_tokens=config.max_new_tokens, batch_size=config.batch_size, progress=True)
    pairs = [(query, answer) for query, answer in zip(data.queries, answers) if answer]
    if not pairs:
        raise JaxheadsError(f"the model's greedy answers to all {len(data)} prompts of {config.harmless} are empty, "
                            "so there is no text to measure perplexity on")
    examples = tokenize_examples(model.tokenizer, pairs, config.prompt_format, model.config.max_position_embeddings)
    return examples, len(data) - len(pairs)


def run(config) -> dict:
    """Evaluates every setting (resuming finished ones); returns the contents of utility.json."""
    check_config(config)
    heads, source = chosen_heads(config)
    max_heads = config.max_heads or len(heads)
    if not 1 <= max_heads <= len(heads):
        raise JaxheadsError(f"--max_heads must be in 0..{len(heads)} (the heads in the set; 0 = all), "
                            f"got {config.max_heads}")
    with io.RunFolder(config.out) as folder:
        model = common.load_model(config)
        if config.sahara:
            read_head_file(config.sahara, "sahara", model, need="heads")
        settings = common.head_settings(heads, model.config.num_layers, model.config.num_heads, max_heads,
                                 config.random_draws, config.seed)
        data = common.load_prompt_set(model, config.harmless, config.prompt_format, config.column, config.limit)
        # A run judged by the default keyword judge records no judge, as runs did before --judge existed.
        folder.check(common.fingerprint("utility", config, {"model": model}, {"harmless": data, "heads": heads},
                                        exclude=("judge",) if config.judge == "keyword" else ()),
                     [LOG, ANSWERS])
        judge = common.load_judge(config, model)
        mesh = common.device_mesh(config)
        examples, empty = reference_examples(model, data, config)
        problems = arithmetic_problems(config.problems, config.problem_seed)
        log = io.JsonlLog(os.path.join(config.out, LOG))
        done = {record["index"]: record for record in log.read()}
        for index, (name, k, ablated) in enumerate(settings):
            if index in done:
                continue
            measures = evaluate_setting(model, ablated, data, examples, problems, config, mesh, judge)
            done[index] = {"index": index, "name": name, "k": k, "heads": [list(h) for h in ablated], **measures}
            log.append(done[index])
            print(f"[{index + 1}/{len(settings)}] {name} k={k} {ablated}: perplexity {measures['perplexity']:.3f}, "
                  f"harmless refusal rate {measures['refusal_rate']:.3f}, arithmetic accuracy "
                  f"{measures['arithmetic_accuracy']:.3f}", flush=True)
        records = [done[i] for i in range(len(settings))]
        table = summary(records, max_heads)
        output = {**common.shape_fields(model, len(data)), "harmless": config.harmless, "heads_from": source,
                  "heads": [list(h) for h in heads], "max_heads": max_heads, "ablation": config.ablation,
                  "epsilon": config.epsilon,
                  "perplexity_text": {"answers": "the unablated model's greedy answers to the harmless prompts",
                                      "examples": len(examples), "empty_answers_left_out": empty,
                                      "answer_tokens": sum(len(e.ids) - e.prompt_length for e in examples)},
                  "arithmetic": {"problems": len(problems), "seed": config.problem_seed},
                  "judge": asr.judge_description(judge), "asr_protocol": config.asr_protocol, "generation": generation_settings(config),
                  "axes": {f"summary.{measure}.{key}": ["k"] for measure in MEASURES
                           for key in ("chosen", "random_mean", "random_std")},
                  "summary": table, "evaluations": records, "settings": config.to_dict()}
        common.write_result(config.out, "utility.json", output)
        label = os.path.basename(source) if config.sahara else config.heads.strip()
        plots.plot_utility(table, os.path.join(config.out, "utility.png"),
                           title=f"{model.name}, heads of {label}: perplexity and refusals on {len(data)} prompts "
                                 f"of {config.harmless}, accuracy on {len(problems)} arithmetic problems")
    for k in range(1, max_heads + 1):
        print(f"k={k}: " + "; ".join(
            f"{measure} {table[measure]['chosen'][k - 1]:.3f} (random {table[measure]['random_mean'][k - 1]:.3f} "
            f"± {table[measure]['random_std'][k - 1]:.3f}, none {table[measure]['none']:.3f})" for measure in MEASURES))
    print(f"wrote {config.out}/utility.json and utility.png")
    return output
