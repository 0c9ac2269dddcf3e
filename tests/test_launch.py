"""The absl launches end to end on a tiny local model: outputs written, resumable, bad inputs rejected."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_launch(name, *flags, check=True, devices=1):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": str(devices)}
    result = subprocess.run([sys.executable, "-m", f"launch.{name}", *flags], cwd=ROOT, capture_output=True,
                            text=True, env=env, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"launch.{name} failed:\n{result.stdout}\n{result.stderr}")
    return result


def test_ships_launch_writes_outputs_and_resumes(tiny_model_with_tokenizer, tmp_path):
    out = tmp_path / "ships"
    flags = [f"--model={tiny_model_with_tokenizer}", "--dataset=builtin:harmful", "--limit=5", "--batch_size=2",
             f"--out={out}"]
    run_launch("ships", *flags)
    result = json.loads((out / "ships.json").read_text())
    assert result["layers"] == 3 and result["heads"] == 4 and result["ablation"] == "ua"
    assert len(result["prompts"]) == 5 and result["prompts"][0].startswith("## Query:")
    scores = np.array(result["scores"])
    assert scores.shape == (5, 3, 4) and (scores > 0).all()
    np.testing.assert_allclose(np.array(result["mean"]), scores.mean(0), rtol=1e-6)
    assert len((out / "ships.csv").read_text().splitlines()) == 1 + 5 * 12
    assert (out / "ships_heatmap.png").stat().st_size > 1000
    # A rerun finds every prompt done and recomputes nothing: the partial log keeps one record per prompt.
    run_launch("ships", *flags)
    partial = (out / "ships.partial.jsonl").read_text().splitlines()
    assert len(partial) == 1 + 5
    assert json.loads((out / "ships.json").read_text())["scores"] == result["scores"]


def test_ships_launch_resumes_after_interruption(tiny_model_with_tokenizer, tmp_path):
    """A log cut after the first batch (and mid-line) is completed, and equals an uninterrupted run."""
    flags = [f"--model={tiny_model_with_tokenizer}", "--dataset=builtin:harmless", "--limit=4", "--batch_size=2"]
    run_launch("ships", *flags, f"--out={tmp_path / 'full'}")
    full = json.loads((tmp_path / "full" / "ships.json").read_text())
    lines = (tmp_path / "full" / "ships.partial.jsonl").read_text().splitlines()
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / "ships.partial.jsonl").write_text("\n".join(lines[:3]) + "\n" + lines[3][:20])
    run_launch("ships", *flags, f"--out={cut}")
    resumed = json.loads((cut / "ships.json").read_text())
    np.testing.assert_allclose(resumed["scores"], full["scores"], rtol=1e-5)


def test_ships_launch_refuses_a_log_from_other_settings(tiny_model_with_tokenizer, tmp_path):
    flags = [f"--model={tiny_model_with_tokenizer}", "--limit=2", f"--out={tmp_path}"]
    run_launch("ships", *flags)
    result = run_launch("ships", *flags, "--ablation=sc", check=False)
    assert result.returncode != 0 and "other settings" in result.stderr


def test_sahara_and_evaluate_launches(tiny_model_with_tokenizer, tmp_path):
    model = f"--model={tiny_model_with_tokenizer}"  # on 4 simulated devices: rows over 2, heads and MLP over 2
    run_launch("sahara", model, "--limit=6", "--steps=2", "--batch_size=3", "--mesh=2,2",
               f"--out={tmp_path / 'sahara'}", devices=4)
    sahara = json.loads((tmp_path / "sahara" / "sahara.json").read_text())
    assert len(sahara["heads"]) == 2 and len(sahara["steps"]) == 2 and sahara["rank"] == 1
    assert sahara["steps"][1]["scores"][sahara["heads"][0][0]][sahara["heads"][0][1]] is None
    assert (tmp_path / "sahara" / "sahara_heads.png").stat().st_size > 1000
    run_launch("evaluate", model, "--limit=4", "--max_new_tokens=8", f"--ablate_from={tmp_path / 'sahara' / 'sahara.json'}",
               "--mesh=-1,2", f"--out={tmp_path / 'eval'}", devices=4)
    asr = json.loads((tmp_path / "eval" / "asr.json").read_text())
    assert asr["n"] == 4 and 0 <= asr["asr"] <= 1 and asr["ablated"] == sahara["heads"]
    generations = [json.loads(line) for line in (tmp_path / "eval" / "generations.jsonl").read_text().splitlines()]
    assert len(generations) == 4 and all("response" in g and "refused" in g for g in generations)


def test_evaluate_top_k_from_ships(tiny_model_with_tokenizer, tmp_path):
    model = f"--model={tiny_model_with_tokenizer}"
    run_launch("ships", model, "--limit=3", f"--out={tmp_path / 'ships'}")
    run_launch("evaluate", model, f"--top_k_from={tmp_path / 'ships' / 'ships.json'}", "--top_k=2",
               "--max_new_tokens=4", f"--out={tmp_path / 'eval'}")
    generations = [json.loads(line) for line in (tmp_path / "eval" / "generations.jsonl").read_text().splitlines()]
    ships = json.loads((tmp_path / "ships" / "ships.json").read_text())
    for record, scores in zip(generations, ships["scores"]):
        scores = np.array(scores)
        top = sorted(np.argsort(-scores, axis=None)[:2])
        assert sorted(l * 4 + n for l, n in record["ablated"]) == top


@pytest.mark.parametrize("flags, message", [
    (["--model=/no/such/dir"], "no such model file or directory"),
    (["--dataset=/no/such/file.csv"], "/no/such/file.csv"),
    (["--ablate=9:0"], "out of range"),
    (["--ablate=three"], "layer:head pairs"),
])
def test_evaluate_bad_inputs(tiny_model_with_tokenizer, tmp_path, flags, message):
    args = [f"--model={tiny_model_with_tokenizer}", "--limit=2", f"--out={tmp_path}"]
    result = run_launch("evaluate", *args, *flags, check=False)
    assert result.returncode != 0 and message in result.stderr


def test_sahara_asr_launch_compares_with_random_heads(tiny_model_with_tokenizer, tmp_path):
    model = f"--model={tiny_model_with_tokenizer}"
    sahara_heads = [[2, 3], [0, 1]]
    (tmp_path / "sahara.json").write_text(json.dumps({"heads": sahara_heads}))
    flags = [model, f"--sahara={tmp_path / 'sahara.json'}", "--limit=3", "--max_new_tokens=4", "--random_draws=2",
             f"--out={tmp_path / 'compare'}"]
    run_launch("sahara_asr", *flags)
    result = json.loads((tmp_path / "compare" / "sahara_asr.json").read_text())
    settings = result["settings"]
    assert [(s["name"], s["k"]) for s in settings] == [("none", 0), ("sahara", 1), ("sahara", 2), ("random", 1),
                                                       ("random", 1), ("random", 2), ("random", 2)]
    assert settings[1]["heads"] == sahara_heads[:1] and settings[2]["heads"] == sahara_heads
    for setting in settings[3:]:
        heads = [tuple(h) for h in setting["heads"]]
        assert len(set(heads)) == setting["k"] and not set(heads) & {(2, 3), (0, 1)}
        assert all(0 <= layer < 3 and 0 <= head < 4 for layer, head in heads)
    assert result["sahara"] == [settings[1]["asr"], settings[2]["asr"]]
    assert result["random_mean"] == [np.mean([s["asr"] for s in settings[3:5]]),
                                     np.mean([s["asr"] for s in settings[5:7]])]
    assert (tmp_path / "compare" / "sahara_asr.png").stat().st_size > 1000
    # The Sahara k=2 setting is the same evaluation as launch.evaluate with those heads ablated.
    run_launch("evaluate", model, "--limit=3", "--max_new_tokens=4", "--ablate=2:3,0:1", f"--out={tmp_path / 'eval'}")
    assert json.loads((tmp_path / "eval" / "asr.json").read_text())["asr"] == settings[2]["asr"]
    # A rerun finds every setting done.
    run_launch("sahara_asr", *flags)
    assert len((tmp_path / "compare" / "sahara_asr.partial.jsonl").read_text().splitlines()) == 1 + 7
    bad = run_launch("sahara_asr", *flags[:-1], "--max_heads=3", f"--out={tmp_path / 'bad'}", check=False)
    assert bad.returncode != 0 and "max_heads must be in 1..2" in bad.stderr
