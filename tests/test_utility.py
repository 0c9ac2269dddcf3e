"""`jaxheads utility` called in-process on a tiny local model: the perplexity it reports is the answer tokens'
mean cross-entropy recomputed here from `jaxheads.forward`, its refusal rate is `eval.asr.evaluate`'s, its files
are written and self-describing, a rerun resumes without recomputing, and bad settings stop before any work."""

import json
import math

import numpy as np
import pytest

import jaxheads
from jaxheads.configs import utility as utility_config
from jaxheads.errors import JaxheadsError
from jaxheads.eval import asr
from jaxheads.eval.utility import answer_perplexity
from jaxheads.interventions import ablation_mask, from_mask
from jaxheads.jobs import common, utility
from jaxheads.jobs.common import load_prompt_set
from jaxheads.train import tokenize_examples
from jaxheads.train.datasets import model_answers

PROVENANCE_KEYS = {"jaxheads_version", "git_commit", "jax_version", "devices", "created_utc", "argv"}
SETTINGS = dict(heads="2:1,0:3", limit=3, max_new_tokens=8, batch_size=3, random_draws=2, problems=3)


def config_of(**values):
    config = utility_config.get_config()
    config.update(values)
    return config


def reference_cross_entropy(model, examples, interventions=None) -> float:
    """Mean next-token cross-entropy over every answer token, one example at a time, in numpy. Each example is
    followed by filler tokens up to one common length (one compilation); attention is causal, so they cannot change
    the logits at the example's own positions."""
    losses, width = [], max(len(example.ids) for example in examples)
    for example in examples:
        ids = np.asarray(example.ids)
        row = np.r_[ids, np.full(width - len(ids), ids[-1])]
        logits = np.asarray(jaxheads.forward(model, row[None], interventions=interventions)[0], np.float64)
        log_probs = logits - logits.max(-1, keepdims=True)
        log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
        targets = np.arange(example.prompt_length, len(ids))  # answer tokens, each predicted from the one before
        losses += (-log_probs[targets - 1, ids[targets]]).tolist()
    return float(np.mean(losses))


@pytest.fixture(scope="module")
def finished(tiny_model_with_tokenizer, tmp_path_factory):
    """One finished run: (the tiny model's folder, the output folder, what run returned)."""
    out = tmp_path_factory.mktemp("utility")
    result = utility.run(config_of(model=str(tiny_model_with_tokenizer), out=str(out), **SETTINGS))
    return tiny_model_with_tokenizer, out, result


def test_perplexity_is_the_answer_tokens_cross_entropy_of_the_models_own_answers(finished):
    model_dir, out, result = finished
    model = jaxheads.load(str(model_dir))
    data = load_prompt_set(model, "builtin:harmless:heldout", "template", limit=3)
    answers = model_answers(model, data.queries, "template", out / "harmless_answers.jsonl", max_new_tokens=8)
    examples = tokenize_examples(model.tokenizer, [p for p in zip(data.queries, answers) if p[1]], "template",
                                 model.config.max_position_embeddings)
    assert len(examples) == result["perplexity_text"]["examples"] >= 2
    assert all(len(example.ids) > example.prompt_length for example in examples)

    none = result["evaluations"][0]
    assert (none["name"], none["k"], none["heads"]) == ("none", 0, [])
    assert result["summary"]["perplexity"]["none"] == none["perplexity"]
    np.testing.assert_allclose(none["perplexity"], math.exp(reference_cross_entropy(model, examples)), rtol=1e-5)

    # Ablating heads changes the perplexity, and the batched value matches the per-example one there too.
    heads = [(2, 1), (0, 3)]
    interventions = from_mask(ablation_mask(heads, 3, 4), "ua", 1e-5)
    ablated = answer_perplexity(model, examples, interventions, batch_size=2)  # two batches
    np.testing.assert_allclose(ablated.perplexity, math.exp(reference_cross_entropy(model, examples, interventions)),
                               rtol=1e-5)
    chosen = {record["k"]: record for record in result["evaluations"] if record["name"] == "chosen"}
    np.testing.assert_allclose(chosen[2]["perplexity"], ablated.perplexity, rtol=1e-6)
    assert abs(chosen[1]["perplexity"] - none["perplexity"]) > 1e-3 * none["perplexity"]
    assert abs(ablated.perplexity - none["perplexity"]) > 1e-3 * none["perplexity"]


def test_refusal_rate_without_ablation_is_that_of_asr_evaluate(finished):
    model_dir, _, result = finished
    model = jaxheads.load(str(model_dir))
    data = load_prompt_set(model, "builtin:harmless:heldout", "template", limit=3)
    reference = asr.evaluate(model, data.queries, data.prompts, [], max_new_tokens=8, batch_size=3)
    assert result["evaluations"][0]["refusal_rate"] == 1.0 - reference.asr
    assert result["summary"]["refusal_rate"]["none"] == 1.0 - reference.asr


def test_outputs_are_written_and_self_describing(finished):
    _, out, result = finished
    written = json.loads((out / "utility.json").read_text())
    assert set(written["provenance"]) == PROVENANCE_KEYS
    assert (written["num_layers"], written["num_heads"], written["num_prompts"]) == (3, 4, 3)
    assert written["heads"] == [[2, 1], [0, 3]] and written["heads_from"] == "--heads"
    assert written["max_heads"] == 2 and written["arithmetic"] == {"problems": 3, "seed": 1}
    assert written["judge"]["name"] == "keyword" and written["generation"]["max_new_tokens"] == 8
    # none, the set's first 1 and 2 heads, then 2 random draws for k = 1 and for k = 2
    assert [(r["name"], r["k"]) for r in written["evaluations"]] == [
        ("none", 0), ("chosen", 1), ("chosen", 2), ("random", 1), ("random", 1), ("random", 2), ("random", 2)]
    for record in written["evaluations"]:
        assert not {tuple(head) for head in record["heads"]} & ({(2, 1), (0, 3)} if record["name"] == "random"
                                                                else set())
        assert record["perplexity"] > 1 and 0 <= record["refusal_rate"] <= 1
        assert 0 <= record["arithmetic_accuracy"] <= 1
    for measure in ("perplexity", "refusal_rate", "arithmetic_accuracy"):
        table = written["summary"][measure]
        assert set(table) == {"none", "chosen", "random_mean", "random_std"}
        assert len(table["chosen"]) == len(table["random_mean"]) == len(table["random_std"]) == 2
        draws = [r[measure] for r in written["evaluations"] if r["name"] == "random" and r["k"] == 2]
        assert table["random_mean"][1] == pytest.approx(np.mean(draws))
        assert table["random_std"][1] == pytest.approx(np.std(draws))
        assert written["axes"][f"summary.{measure}.chosen"] == ["k"]
    assert written["summary"] == result["summary"]
    assert (out / "utility.png").stat().st_size > 1000


def test_a_rerun_resumes_without_recomputing_and_refuses_other_settings(finished, monkeypatch):
    model_dir, out, result = finished
    log = out / "utility.partial.jsonl"
    assert len(log.read_text().splitlines()) == 7

    def no_work(*args, **kwargs):
        raise AssertionError("a finished setting was evaluated again")

    monkeypatch.setattr(utility, "evaluate_setting", no_work)
    again = utility.run(config_of(model=str(model_dir), out=str(out), **SETTINGS))
    assert again["summary"] == result["summary"] and len(log.read_text().splitlines()) == 7
    with pytest.raises(JaxheadsError, match=r"settings\.random_draws: 2 -> 3"):
        utility.run(config_of(model=str(model_dir), out=str(out), **{**SETTINGS, "random_draws": 3}))
    with pytest.raises(JaxheadsError, match=r"settings\.heads"):
        utility.run(config_of(model=str(model_dir), out=str(out), **{**SETTINGS, "heads": "2:1,0:2"}))


@pytest.mark.parametrize("values, message", [
    (dict(max_heads=3), r"--max_heads must be in 0\.\.2"),
    (dict(heads="9:0,0:3"), r"head \(9, 0\) is out of range"),
    (dict(heads="2:1,0:4"), r"head \(0, 4\) is out of range"),
    (dict(heads="2-1"), "--heads wants layer:head pairs"),
    (dict(heads="2:1,2:1"), r"lists \(2, 1\) more than once"),
    (dict(heads=""), "not neither"),
    (dict(sahara="sahara.json"), "not both"),
    (dict(heads=",".join(f"{layer}:{head}" for layer in range(3) for head in range(3)), max_heads=4),
     "cannot be drawn from the 3 heads"),
    (dict(random_draws=0), "--random_draws must be an integer >= 1"),
    (dict(problems=0), "--problems must be an integer >= 1"),
])
def test_bad_settings_stop_before_any_work(tiny_model_with_tokenizer, tmp_path, values, message):
    out = tmp_path / "out"
    with pytest.raises(JaxheadsError, match=message):
        utility.run(config_of(model=str(tiny_model_with_tokenizer), out=str(out), **{**SETTINGS, **values}))
    assert not any((out / name).exists() for name in ("fingerprint.json", "utility.partial.jsonl",
                                                      "harmless_answers.jsonl", "utility.json"))


def test_the_set_comes_from_a_sahara_json_or_the_heads_flag(tmp_path):
    path = tmp_path / "sahara.json"
    path.write_text(json.dumps({"heads": [[2, 1], [0, 3], [1, 0]]}))
    assert utility.chosen_heads(config_of(sahara=str(path))) == ([(2, 1), (0, 3), (1, 0)], str(path))
    assert utility.chosen_heads(config_of(heads=" 18:8, 5:6 ")) == ([(18, 8), (5, 6)], "--heads")
    path.write_text(json.dumps({"scores": [[0.5]]}))
    with pytest.raises(JaxheadsError, match='no list of \\[layer, head\\] pairs under "heads"'):
        utility.chosen_heads(config_of(sahara=str(path)))
    settings = common.head_settings([(2, 1), (0, 3), (1, 0)], 3, 4, 2, 3, seed=0)
    assert settings[:3] == [("none", 0, []), ("chosen", 1, [(2, 1)]), ("chosen", 2, [(2, 1), (0, 3)])]
    assert [k for name, k, _ in settings if name == "random"] == [1, 1, 1, 2, 2, 2]
    assert all(not set(heads) & {(2, 1), (0, 3), (1, 0)} for name, _, heads in settings if name == "random")
