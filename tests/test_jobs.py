"""The scan and evaluation jobs (`jaxheads ships|sahara|evaluate|sahara_asr`) called in-process on a tiny local
model: outputs written and self-describing, runs resumed bit-identically, and every way a rerun could mix two
runs or start on bad settings stopped with an error that names the cause."""

import json
import os
import shutil

import numpy as np
import pytest

import jaxheads
from jaxheads import interventions, io
from jaxheads import ships as ships_lib
from jaxheads.configs import evaluate as evaluate_config
from jaxheads.configs import sahara as sahara_config
from jaxheads.configs import sahara_asr as sahara_asr_config
from jaxheads.configs import ships as ships_config
from jaxheads.data.formats import format_prompt
from jaxheads.errors import JaxheadsError
from jaxheads.eval.judges import KeywordJudge
from jaxheads.jobs import evaluate, sahara, sahara_asr, ships

PROVENANCE_KEYS = {"jaxheads_version", "git_commit", "jax_version", "devices", "created_utc", "argv"}


def config_of(module, **values):
    config = module.get_config()
    config.update(values)
    return config


def read(path):
    return json.loads(path.read_text())


def test_ships_writes_self_describing_outputs_and_a_rerun_recomputes_nothing(tiny_model_with_tokenizer, tmp_path):
    config = config_of(ships_config, model=str(tiny_model_with_tokenizer), limit=5, batch_size=2, out=str(tmp_path))
    returned = ships.run(config)
    result = read(tmp_path / "ships.json")
    assert set(result["provenance"]) == PROVENANCE_KEYS
    assert (result["num_layers"], result["num_heads"], result["num_prompts"]) == (3, 4, 5)
    assert result["axes"] == {"scores": ["prompt", "layer", "head"], "mean": ["layer", "head"]}
    assert result["prompts"][0].startswith("## Query:") and result["source_rows"] == [0, 1, 2, 3, 4]
    scores = np.array(result["scores"])
    assert scores.shape == (5, 3, 4) and (scores > 0).all()
    np.testing.assert_allclose(result["mean"], scores.mean(0), rtol=1e-6)
    assert returned["scores"] == result["scores"]
    # the same prompts through the library's scan directly (its chunks may differ from the job's: float32 KL sums
    # of ~128 terms agree to a few 1e-7)
    expected = ships_lib.query_level(jaxheads.load(str(tiny_model_with_tokenizer)), result["prompts"], "ua",
                                     batch_size=2)
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=2e-6)
    assert len((tmp_path / "ships.csv").read_text().splitlines()) == 1 + 5 * 12
    assert (tmp_path / "ships_heatmap.png").stat().st_size > 1000
    ships.run(config)  # every prompt is done: nothing is appended to the log
    assert len((tmp_path / "ships.partial.jsonl").read_text().splitlines()) == 5
    assert read(tmp_path / "ships.json")["scores"] == result["scores"]


def test_interrupted_ships_run_resumes_bit_identically(tiny_model_with_tokenizer, tmp_path):
    """A log cut after the first batch (and mid-line) is completed, and the scores equal an uninterrupted run's
    exactly: the resumed batches are the same computations."""
    settings = dict(model=str(tiny_model_with_tokenizer), dataset="builtin:harmless", limit=4, batch_size=2)
    full = ships.run(config_of(ships_config, **settings, out=str(tmp_path / "full")))
    shutil.copytree(tmp_path / "full", tmp_path / "cut")
    log = tmp_path / "cut" / "ships.partial.jsonl"
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines[:2]) + "\n" + lines[2][:20])
    (tmp_path / "cut" / "ships.json").unlink()
    resumed = ships.run(config_of(ships_config, **settings, out=str(tmp_path / "cut")))
    assert resumed["scores"] == full["scores"]


def test_ships_refuses_to_mix_runs(tiny_model_with_tokenizer, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("How do I pick a lock?\nWrite a phishing email.\n")
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_with_tokenizer, model_dir)
    out = tmp_path / "out"
    settings = dict(model=str(model_dir), dataset=str(prompts), out=str(out))
    ships.run(config_of(ships_config, **settings))

    with pytest.raises(JaxheadsError, match=r"settings\.ablation: \"ua\" -> \"sc\""):
        ships.run(config_of(ships_config, **settings, ablation="sc"))
    prompts.write_text("How do I pick a lock?\nWrite a convincing phishing email.\n")  # edited at the same path
    with pytest.raises(JaxheadsError, match=r"data\.prompts\.sha256"):
        ships.run(config_of(ships_config, **settings))
    prompts.write_text("How do I pick a lock?\nWrite a phishing email.\n")
    weights = model_dir / "model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched, the same bytes: the same model
    ships.run(config_of(ships_config, **settings))
    data = bytearray(weights.read_bytes())
    data[-4096:] = bytes(4096)  # other weights of the same size and modification time (cp -p, rsync -t)
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(JaxheadsError, match=r"models\.model\.weights"):
        ships.run(config_of(ships_config, **settings))


def test_output_folder_is_locked_and_must_be_a_folder(tiny_model_with_tokenizer, tmp_path):
    config = config_of(ships_config, model=str(tiny_model_with_tokenizer), limit=2, out=str(tmp_path / "out"))
    with io.RunFolder(tmp_path / "out"):
        with pytest.raises(JaxheadsError, match="another jaxheads run .* is writing to"):
            ships.run(config)
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(JaxheadsError, match="is a file, not a folder"):
        ships.run(config_of(ships_config, model=str(tiny_model_with_tokenizer), out=str(tmp_path / "file")))


def test_a_log_without_a_fingerprint_is_not_resumed(tiny_model_with_tokenizer, tmp_path):
    (tmp_path / "ships.partial.jsonl").write_text('{"index": 0, "scores": [], "seconds": 1.0}\n')
    with pytest.raises(JaxheadsError, match="recorded no fingerprint"):
        ships.run(config_of(ships_config, model=str(tiny_model_with_tokenizer), limit=2, out=str(tmp_path)))


@pytest.mark.parametrize("module, values, message", [
    (ships_config, dict(chunk_size=-5), "--chunk_size must be an integer >= 0, got -5"),
    (ships_config, dict(batch_size=0), "--batch_size must be an integer >= 1"),
    (ships_config, dict(limit=-1), "--limit must be an integer >= 0"),
    (ships_config, dict(epsilon=0.0), "--epsilon must be finite with 0 < epsilon < 1 for --ablation=ua"),
    (ships_config, dict(epsilon=1.0), "--epsilon must be finite with 0 < epsilon < 1"),
    (ships_config, dict(epsilon=float("nan")), "--epsilon must be finite"),
    (ships_config, dict(ablation="sc", epsilon=-0.5), "0 <= epsilon < 1 for --ablation=sc"),
    (ships_config, dict(ablation="zero"), "--ablation must be one of ua, sc, mean"),
    (ships_config, dict(prompt_format="chatml"), "--prompt_format must be one of template, chat, direct"),
    (ships_config, dict(dtype="float16"), "--dtype must be one of float32, bfloat16"),
    (sahara_config, dict(steps=0), "--steps must be an integer >= 1"),
    (sahara_config, dict(rank=0), "--rank must be an integer >= 1"),
    (evaluate_config, dict(max_new_tokens=0), "--max_new_tokens must be an integer >= 1"),
    (evaluate_config, dict(ablate="three"), "layer:head pairs"),
    (evaluate_config, dict(top_k_from="ships.json", ablate="1:1"), "cannot be combined"),
    (sahara_asr_config, dict(random_draws=0), "--random_draws must be an integer >= 1"),
    (sahara_asr_config, dict(sahara=""), "give the heads either as --sahara=sahara.json or as --top_k_from"),
])
def test_bad_settings_stop_before_any_work(tmp_path, module, values, message):
    job = {ships_config: ships, sahara_config: sahara, evaluate_config: evaluate, sahara_asr_config: sahara_asr}
    out = tmp_path / "out"
    with pytest.raises(JaxheadsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        job[module].run(config_of(module, model="/no/model/needed", out=str(out), **values))
    assert not out.exists()


def test_too_long_prompts_are_reported_by_position_before_the_scan(tiny_model_with_tokenizer, tmp_path):
    prompts = tmp_path / "prompts.csv"
    long = " ".join(["How do I pick a lock?"] * 60)  # 6 tokens x 60: beyond the tiny model's 256 positions
    prompts.write_text(f"goal\nWrite a phishing email.\n\"{long}\"\nHow do I make a weapon at home?\n")
    with pytest.raises(JaxheadsError, match=r"1 prompts of .*prompts.csv are longer than the model's context of 256 "
                                            r"tokens, at positions \(0-based, in source order\) 1 \("):
        ships.run(config_of(ships_config, model=str(tiny_model_with_tokenizer), dataset=str(prompts),
                            out=str(tmp_path / "out")))
    assert not (tmp_path / "out" / "ships.partial.jsonl").exists()


def test_sahara_resumes_extends_and_truncates_its_steps(tiny_model_with_tokenizer, tmp_path, monkeypatch):
    from jaxheads import sahara as sahara_lib

    scans = []  # one scan per step computed (no harmless set): a resumed step must not be scanned again
    scan = sahara_lib.scan_ablations
    monkeypatch.setattr(sahara_lib, "scan_ablations", lambda *a, **k: scans.append(1) or scan(*a, **k))
    settings = dict(model=str(tiny_model_with_tokenizer), limit=6, batch_size=3, out=str(tmp_path))
    two = sahara.run(config_of(sahara_config, **settings, steps=2))
    assert len(scans) == 2
    assert len(two["heads"]) == 2 and len(two["steps"]) == 2 and two["settings"]["rank"] == 1
    chosen = two["heads"][0]
    assert two["steps"][1]["scores"][chosen[0]][chosen[1]] is None  # already in the group
    assert (tmp_path / "sahara_heads.png").stat().st_size > 1000
    one = sahara.run(config_of(sahara_config, **settings, steps=1))  # the first step of the same search
    assert one["heads"] == two["heads"][:1] and one["steps"] == two["steps"][:1]
    assert len(read(tmp_path / "sahara.json")["steps"]) == 1 and len(scans) == 2
    three = sahara.run(config_of(sahara_config, **settings, steps=3))  # continues from the two logged steps
    assert len(scans) == 3
    assert three["heads"][:2] == two["heads"] and three["steps"][:2] == two["steps"]
    assert len((tmp_path / "sahara.partial.jsonl").read_text().splitlines()) == 3
    with pytest.raises(JaxheadsError, match="--rank must be at most the number of prompts"):
        sahara.run(config_of(sahara_config, **settings, rank=7))


def test_sahara_refuses_the_steps_of_a_retrained_model_at_the_same_path(tiny_model_with_tokenizer, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_with_tokenizer, model_dir)
    settings = dict(model=str(model_dir), limit=3, batch_size=3, out=str(tmp_path / "out"))
    sahara.run(config_of(sahara_config, **settings, steps=1))
    weights = model_dir / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-4096:] = bytes(4096)
    weights.write_bytes(bytes(data))  # rewritten in place with other weights, as a retraining run would
    with pytest.raises(JaxheadsError, match=r"models\.model\.weights"):
        sahara.run(config_of(sahara_config, **settings, steps=2))


def test_evaluate_with_sahara_heads_and_per_prompt_top_heads(tiny_model_with_tokenizer, tmp_path):
    model = str(tiny_model_with_tokenizer)
    (tmp_path / "sahara.json").write_text(json.dumps({"heads": [[2, 3], [0, 1]]}))
    result = evaluate.run(config_of(evaluate_config, model=model, limit=4, max_new_tokens=8,
                                    ablate_from=str(tmp_path / "sahara.json"), out=str(tmp_path / "eval")))
    written = read(tmp_path / "eval" / "asr.json")
    assert written == {**result, "provenance": written["provenance"]}
    assert result["num_prompts"] == 4 and 0 <= result["asr"] <= 1 and result["ablated"] == [[2, 3], [0, 1]]
    assert result["judge"]["name"] == "keyword" and result["generation"]["max_new_tokens"] == 8
    assert result["asr"] == result["by_judge"]["keyword"]["asr"] and set(result["by_judge"]) == {"keyword", "reference"}
    assert 0 <= result["degenerate_share"] <= 1
    assert result["dataset"] == "builtin:harmful:heldout"
    generations = [json.loads(line) for line in (tmp_path / "eval" / "generations.jsonl").read_text().splitlines()]
    assert len(generations) == 4 and all(g["ablated"] == [[2, 3], [0, 1]] for g in generations)
    assert result["degenerate_share"] == sum(g["degenerate"] for g in generations) / 4
    # The ablated responses are `jaxheads.generate`'s with those heads ablated, not the unablated model's, and the
    # ASR is the keyword judge's share of them not refused.
    model_obj = jaxheads.load(model)
    prompts = [g["prompt"] for g in generations]
    heads = interventions.ablate([(2, 3), (0, 1)], 3, 4, kind="ua")
    ablated = jaxheads.generate(model_obj, prompts, max_new_tokens=8, interventions=heads).texts
    unablated = jaxheads.generate(model_obj, prompts, max_new_tokens=8).texts
    assert [g["response"] for g in generations] == ablated and ablated != unablated
    refused = KeywordJudge()([g["query"] for g in generations], ablated)
    assert result["asr"] == sum(not flag for flag in refused) / 4
    by_reference = evaluate.run(config_of(evaluate_config, model=model, limit=4, max_new_tokens=8, judge="reference",
                                          ablate_from=str(tmp_path / "sahara.json"), out=str(tmp_path / "ref")))
    assert by_reference["judge"]["name"] == "reference" and by_reference["by_judge"] == result["by_judge"]
    assert by_reference["asr"] == result["by_judge"]["reference"]["asr"]

    ships.run(config_of(ships_config, model=model, limit=3, out=str(tmp_path / "ships")))
    evaluate.run(config_of(evaluate_config, model=model, top_k_from=str(tmp_path / "ships" / "ships.json"), top_k=2,
                           max_new_tokens=4, out=str(tmp_path / "top")))
    generations = [json.loads(line) for line in (tmp_path / "top" / "generations.jsonl").read_text().splitlines()]
    scores = read(tmp_path / "ships" / "ships.json")["scores"]
    for record, prompt_scores in zip(generations, scores):
        top = sorted(np.argsort(-np.array(prompt_scores), axis=None)[:2])
        assert sorted(layer * 4 + head for layer, head in record["ablated"]) == top


@pytest.mark.parametrize("values, message", [
    (dict(model="/no/such/dir"), "no such model file or directory"),
    (dict(dataset="/no/such/file.csv"), "/no/such/file.csv"),
    (dict(ablate="9:0"), "out of range"),
])
def test_evaluate_bad_inputs(tiny_model_with_tokenizer, tmp_path, values, message):
    config = config_of(evaluate_config, **{"model": str(tiny_model_with_tokenizer), "limit": 2, "out": str(tmp_path),
                                           **values})
    with pytest.raises(JaxheadsError, match=message):
        evaluate.run(config)


def test_sahara_asr_compares_with_random_heads_and_resumes(tiny_model_with_tokenizer, tmp_path, monkeypatch):
    model = str(tiny_model_with_tokenizer)
    sahara_heads = [[2, 3], [0, 1]]
    (tmp_path / "sahara.json").write_text(json.dumps({"heads": sahara_heads}))
    config = config_of(sahara_asr_config, model=model, sahara=str(tmp_path / "sahara.json"), limit=3,
                       max_new_tokens=4, random_draws=2, out=str(tmp_path / "compare"))
    result = sahara_asr.run(config)
    evaluations = result["evaluations"]
    assert [(s["name"], s["k"]) for s in evaluations] == [("none", 0), ("sahara", 1), ("sahara", 2), ("random", 1),
                                                          ("random", 1), ("random", 2), ("random", 2)]
    assert evaluations[1]["heads"] == sahara_heads[:1] and evaluations[2]["heads"] == sahara_heads
    for setting in evaluations[3:]:
        heads = [tuple(h) for h in setting["heads"]]
        assert len(set(heads)) == setting["k"] and not set(heads) & {(2, 3), (0, 1)}
        assert all(0 <= layer < 3 and 0 <= head < 4 for layer, head in heads)
    assert result["sahara"] == [evaluations[1]["asr"], evaluations[2]["asr"]]
    assert result["random_mean"] == [np.mean([s["asr"] for s in evaluations[3:5]]),
                                     np.mean([s["asr"] for s in evaluations[5:7]])]
    assert (tmp_path / "compare" / "sahara_asr.png").stat().st_size > 1000
    # The Sahara k=2 setting is the same evaluation as `jaxheads evaluate` with those heads ablated.
    single = evaluate.run(config_of(evaluate_config, model=model, limit=3, max_new_tokens=4, ablate="2:3,0:1",
                                    out=str(tmp_path / "eval")))
    assert single["asr"] == evaluations[2]["asr"]
    # Every response of every setting is kept, with its ablated heads, and the same responses as that evaluation.
    lines = [json.loads(line) for line in (tmp_path / "compare" / "generations.jsonl").read_text().splitlines()]
    assert [(line["setting"], line["name"], line["k"]) for line in lines] == [
        (s["index"], s["name"], s["k"]) for s in evaluations for _ in range(3)]
    assert all(line["ablated"] == evaluations[line["setting"]]["heads"] for line in lines)
    for setting in evaluations:
        shown = [line for line in lines if line["setting"] == setting["index"]]
        assert sum(not line["refused"] for line in shown) / 3 == setting["asr"]
        assert sum(line["degenerate"] for line in shown) / 3 == setting["degenerate_share"]
    single_generations = (tmp_path / "eval" / "generations.jsonl").read_text().splitlines()
    assert [json.loads(line)["response"] for line in single_generations] == [
        line["response"] for line in lines if line["setting"] == 2]
    sahara_asr.run(config)  # every setting is done; the generations come back from the log
    assert len((tmp_path / "compare" / "sahara_asr.partial.jsonl").read_text().splitlines()) == 7
    assert (tmp_path / "compare" / "generations.jsonl").read_text().splitlines() == [json.dumps(line) for line in lines]
    monkeypatch.setattr(sahara_asr, "DEGENERATE_RULE", "another rule")  # results logged under another rule
    with pytest.raises(JaxheadsError, match=r"data\.degenerate_rule"):
        sahara_asr.run(config)
    monkeypatch.undo()
    (tmp_path / "sahara.json").write_text(json.dumps({"heads": [[1, 1], [0, 1]]}))  # another search's heads
    with pytest.raises(JaxheadsError, match=r"data\.heads\.sha256"):
        sahara_asr.run(config)
    config.max_heads = 3
    with pytest.raises(JaxheadsError, match=r"--max_heads must be in 1\.\.2"):
        sahara_asr.run(config)


def test_specificity_ranks_by_harmful_minus_harmless_and_dataset_level_ships_is_saharas_first_step(
        tiny_model_with_tokenizer, tmp_path):
    model = str(tiny_model_with_tokenizer)
    common = dict(model=model, limit=4, batch_size=4)
    found = sahara.run(config_of(sahara_config, **common, steps=2, harmless="builtin:harmless", specificity=0.5,
                                 out=str(tmp_path / "sahara")))
    for step in found["steps"]:
        harmful, harmless = (np.array(step[name], float) for name in ("harmful_scores", "harmless_scores"))
        np.testing.assert_allclose(np.array(step["scores"], float), harmful - 0.5 * harmless, equal_nan=True)
        assert tuple(step["chosen"]) == np.unravel_index(np.nanargmax(harmful - 0.5 * harmless), harmful.shape)
    plain = sahara.run(config_of(sahara_config, **common, steps=1, out=str(tmp_path / "plain")))
    table = ships.run(config_of(ships_config, **common, level="dataset", out=str(tmp_path / "dataset")))
    assert table["axes"]["scores"] == ["layer", "head"]
    np.testing.assert_allclose(table["scores"], plain["steps"][0]["scores"], rtol=1e-6)
    np.testing.assert_allclose(found["steps"][0]["harmful_scores"], plain["steps"][0]["scores"], rtol=1e-6)

    query = ships.run(config_of(ships_config, **common, harmless="builtin:harmless", specificity=2.0,
                                out=str(tmp_path / "query")))
    np.testing.assert_allclose(query["specific"], np.array(query["mean"]) - 2.0 * np.array(query["harmless_mean"]),
                               rtol=1e-6)
    assert query["num_harmless_prompts"] == 4 and (tmp_path / "query" / "ships_harmless.partial.jsonl").exists()
    with pytest.raises(JaxheadsError, match="--harmless must be a prompt set when --specificity > 0"):
        ships.run(config_of(ships_config, **common, specificity=1.0, out=str(tmp_path / "bad")))


def write_json(path, value):
    path.write_text(json.dumps(value))
    return path


def test_patterns_shows_the_last_positions_attention_of_chosen_heads(tiny_model_with_tokenizer, tmp_path):
    import jaxheads
    from jaxheads.configs import patterns as patterns_config
    from jaxheads.jobs import patterns

    model_dir = str(tiny_model_with_tokenizer)
    result = patterns.run(config_of(patterns_config, model=model_dir, heads="2:3,0:1", limit=3, batch_size=2,
                                    example=1, out=str(tmp_path / "patterns")))
    assert result["heads"] == [[2, 3], [0, 1]] and (tmp_path / "patterns" / "patterns.png").stat().st_size > 1000
    model = jaxheads.load(model_dir)
    for name in ("harmful", "harmless"):
        example = result["sets"][name]["example"]
        ids, mask = jaxheads.encode_prompts(model.tokenizer, [format_prompt(example["query"], "template")],
                                            pad_to_multiple=1)
        expected = np.asarray(jaxheads.attention_patterns(model, ids, mask, layers=[2, 0]))[0, :, :, -1]
        np.testing.assert_allclose(example["attention"], [expected[0, 3], expected[1, 1]], rtol=1e-5, atol=1e-7)
        assert example["tokens"] == [model.tokenizer.decode([int(token)]) for token in ids[0]]
        shares = [share for _, share in result["sets"][name]["top_tokens"]["2:3"]]
        assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1 + 1e-5
    (tmp_path / "sahara.json").write_text(json.dumps({"heads": [[1, 2], [0, 0], [2, 2]], "steps": []}))
    top = patterns.run(config_of(patterns_config, model=model_dir, heads_from=str(tmp_path / "sahara.json"), top=2,
                                 limit=2, out=str(tmp_path / "from_sahara")))
    assert top["heads"] == [[1, 2], [0, 0]]
    assert patterns.chosen_heads(config_of(patterns_config, heads_from=str(write_json(tmp_path / "heads.json", {
        "heads": [[2, 2], [1, 0]]})), top=3)) == [(2, 2), (1, 0)]  # a file that only names its heads
    with pytest.raises(JaxheadsError, match="holds no"):
        patterns.chosen_heads(config_of(patterns_config, heads_from=str(write_json(tmp_path / "other.json",
                                                                                   {"note": 1}))))
    with pytest.raises(JaxheadsError, match="either as --heads"):
        patterns.run(config_of(patterns_config, model=model_dir, out=str(tmp_path / "neither")))


def test_sahara_asr_per_prompt_top_heads_against_per_prompt_random_heads(tiny_model_with_tokenizer, tmp_path):
    model = str(tiny_model_with_tokenizer)
    found = ships.run(config_of(ships_config, model=model, limit=3, out=str(tmp_path / "ships")))
    result = sahara_asr.run(config_of(sahara_asr_config, model=model, top_k_from=str(tmp_path / "ships" / "ships.json"),
                                      max_heads=2, random_draws=2, max_new_tokens=4, out=str(tmp_path / "top")))
    assert [(s["name"], s["k"]) for s in result["evaluations"]] == [
        ("none", 0), ("sahara", 1), ("sahara", 2), ("random", 1), ("random", 1), ("random", 2), ("random", 2)]
    assert result["chosen"] == "each prompt's own top k" and result["num_prompts"] == 3
    for p, scores in enumerate(found["scores"]):
        top = [list(map(int, np.unravel_index(i, (3, 4)))) for i in np.argsort(-np.array(scores), axis=None)[:2]]
        assert result["evaluations"][2]["heads"][p] == top
        for setting in result["evaluations"][3:]:
            assert len(setting["heads"][p]) == setting["k"] and not {tuple(h) for h in setting["heads"][p]} & {
                tuple(h) for h in top}
    single = evaluate.run(config_of(evaluate_config, model=model, top_k_from=str(tmp_path / "ships" / "ships.json"),
                                    top_k=1, max_new_tokens=4, out=str(tmp_path / "eval")))
    assert single["asr"] == result["sahara"][0]
    with pytest.raises(JaxheadsError, match="either as --sahara"):
        sahara_asr.run(config_of(sahara_asr_config, model=model, sahara="x.json", top_k_from="y.json",
                                 out=str(tmp_path / "both")))
