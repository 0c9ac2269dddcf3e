"""`jaxheads compare` on hand-made ships.json and sahara.json files: top-k overlaps, their expectation and
hypergeometric p-values counted by hand on a 4 x 5 grid, Spearman with ties against a hand computation, and the
errors for runs that cannot be compared."""

import json
import math
import os
import shutil
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest

from jaxheads import compare
from jaxheads.configs import compare as compare_config
from jaxheads.errors import JaxheadsError
from jaxheads.jobs import compare as job

L, N = 4, 5  # 20 heads; flat index f = layer * 5 + head

# Run A: strictly decreasing in the flat index, so its top-5 is layer 0 (f = 0..4) and its top-10 layers 0-1.
A = np.arange(20, 0, -1, dtype=float).reshape(L, N)
# Run B by flat index: f=10 -> 9; f=0 and f=11 tie at 8 (0 goes first); f=1 -> 7; f=2 and f=15 tie at 6, right at
# the top-5 cut-off (2 goes first, so it is in B's top-5 and 15 is not); then 5 -> 5, 16 -> 4, 17 -> 3, 18 -> 2;
# the other ten heads tie at 1.
B_VALUES = {10: 9, 0: 8, 11: 8, 1: 7, 2: 6, 15: 6, 5: 5, 16: 4, 17: 3, 18: 2}
B = np.array([B_VALUES.get(f, 1) for f in range(20)], dtype=float).reshape(L, N)
# B's top-5 = flat [10, 0, 11, 1, 2]; top-10 = [10, 0, 11, 1, 2, 15, 5, 16, 17, 18].
# Shared with A's top-5 {0..4}: {0, 1, 2} -> 3.  Shared with A's top-10 {0..9}: {0, 1, 2, 5} -> 4.


def hypergeom_tail_by_definition(x, population, successes, draws):
    """P(X >= x) = sum_{i >= x} C(K, i) C(M - K, n - i) / C(M, n), written out independently of the library."""
    total = math.comb(population, draws)
    return sum(Fraction(math.comb(successes, i) * math.comb(population - successes, draws - i), total)
               for i in range(x, min(successes, draws) + 1))


def ships_file(path, scores, model="model-a", level=None, dataset="builtin:harmful", ablation="ua"):
    scores = np.asarray(scores, dtype=float)
    settings = {"ablation": ablation, "epsilon": 1e-5, "dataset": dataset}
    result = {"model": model, "num_layers": scores.shape[0], "num_heads": scores.shape[1], "dataset": dataset}
    if level == "dataset":
        result.update(scores=scores.tolist(), settings={**settings, "level": "dataset"})
    else:  # query level: two prompts whose mean is `scores`
        result.update(num_prompts=2, scores=[(scores - 1).tolist(), (scores + 1).tolist()], mean=scores.tolist(),
                      settings=settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result))
    return str(path)


def sahara_file(path, step1, model="model-b"):
    step1 = np.asarray(step1, dtype=float)
    chosen = np.unravel_index(np.argmax(step1), step1.shape)
    step2 = (step1 + 0.5).tolist()
    step2[chosen[0]][chosen[1]] = None
    result = {"model": model, "num_layers": step1.shape[0], "num_heads": step1.shape[1], "dataset": "builtin:harmful",
              "heads": [list(map(int, chosen)), [0, 0]],
              "steps": [{"chosen": list(map(int, chosen)), "scores": step1.tolist(), "seconds": 1.0},
                        {"chosen": [0, 0], "scores": step2, "seconds": 1.0}],
              "settings": {"ablation": "sc", "epsilon": 0.0, "rank": 1, "steps": 2}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result))
    return str(path)


def config_of(**values):
    config = compare_config.get_config()
    config.update(values)
    return config


def test_hypergeometric_tail_is_the_exact_sum_of_the_definition():
    # hand arithmetic: C(5,3)C(15,2) + C(5,4)C(15,1) + C(5,5) = 1050 + 75 + 1 over C(20,5) = 15504
    assert hypergeom_tail_by_definition(3, 20, 5, 5) == Fraction(1126, 15504)
    assert compare.hypergeom_tail(3, 20, 5, 5) == pytest.approx(1126 / 15504, rel=1e-15)
    # 1 - sum_{i<=3} C(10,i)^2 / C(20,10) = 1 - (1 + 100 + 2025 + 14400) / 184756 = 168230 / 184756
    assert compare.hypergeom_tail(4, 20, 10, 10) == pytest.approx(168230 / 184756, rel=1e-15)
    for population, successes, draws in [(20, 5, 5), (1024, 10, 10), (30, 7, 12), (5, 5, 5)]:
        for x in range(0, min(successes, draws) + 2):
            expected = float(hypergeom_tail_by_definition(x, population, successes, draws))
            assert compare.hypergeom_tail(x, population, successes, draws) == pytest.approx(expected, rel=1e-14)
    assert compare.hypergeom_tail(0, 20, 5, 5) == 1.0 and compare.hypergeom_tail(6, 20, 5, 5) == 0.0
    # Llama-2-7b's 1024 heads: 10 shared of 10 has probability 1 / C(1024, 10), far below a float's epsilon
    assert compare.hypergeom_tail(10, 1024, 10, 10) == pytest.approx(1 / math.comb(1024, 10), rel=1e-14)
    assert compare.expected_overlap(10, 10, 1024) == pytest.approx(100 / 1024)


def test_spearman_with_ties_against_a_hand_computation():
    a = [[1, 2, 3], [4, 5, 6]]  # ranks 1..6
    b = [[2, 1, 1], [3, 3, 4]]  # average ranks 3, 1.5, 1.5, 4.5, 4.5, 6
    np.testing.assert_array_equal(compare.average_ranks(b), [3, 1.5, 1.5, 4.5, 4.5, 6])
    # deviations from the mean rank 3.5: a -2.5 -1.5 -0.5 0.5 1.5 2.5; b -0.5 -2 -2 1 1 2.5
    # sum of products 13.5; sums of squares 17.5 and 16.5
    assert compare.spearman(a, b) == pytest.approx(13.5 / math.sqrt(17.5 * 16.5), rel=1e-12)
    assert compare.spearman(a, a) == pytest.approx(1.0) and compare.spearman(a, -np.array(a)) == pytest.approx(-1.0)
    assert math.isnan(compare.spearman(a, [[1, 1, 1], [1, 1, 1]]))  # a constant map has no ranking


def test_top_heads_break_ties_by_the_lower_flat_index():
    assert compare.top_heads(B, 5) == [(2, 0), (0, 0), (2, 1), (0, 1), (0, 2)]
    assert compare.tied_at_cutoff(B, 5) and not compare.tied_at_cutoff(B, 4)
    assert compare.top_heads(np.zeros((2, 2)), 3) == [(0, 0), (0, 1), (1, 0)]
    with pytest.raises(JaxheadsError, match="k must be in 1..20"):
        compare.top_heads(A, 21)


def test_two_ships_runs_overlap_expectation_and_p_value(tmp_path, capsys):
    runs = f"{ships_file(tmp_path / 'llama' / 'ships.json', A)},{ships_file(tmp_path / 'vicuna' / 'ships.json', B)}"
    result = job.run(config_of(runs=runs, top_k="5,10", out=str(tmp_path / "out")))

    assert [run["label"] for run in result["runs"]] == ["llama", "vicuna"]  # labels default to folder names
    assert result["runs"][0]["top_heads"]["5"] == [[0, 0], [0, 1], [0, 2], [0, 3], [0, 4]]
    assert result["runs"][1]["top_heads"]["5"] == [[2, 0], [0, 0], [2, 1], [0, 1], [0, 2]]
    assert result["runs"][1]["tied_at_cutoff"] == {"5": True, "10": False}
    assert (result["num_layers"], result["num_heads"]) == (4, 5)
    (pair,) = result["pairs"]
    assert pair["runs"] == ["llama", "vicuna"]
    five, ten = pair["top_k"]["5"], pair["top_k"]["10"]
    assert five["overlap"] == 3 and five["shared"] == [[0, 0], [0, 1], [0, 2]]
    assert five["expected"] == pytest.approx(5 * 5 / 20)
    assert five["p_value"] == pytest.approx(float(hypergeom_tail_by_definition(3, 20, 5, 5)), rel=1e-14)
    assert five["p_value"] == pytest.approx(1126 / 15504, rel=1e-14)
    assert ten["overlap"] == 4 and ten["shared"] == [[0, 0], [0, 1], [0, 2], [1, 0]]
    assert ten["expected"] == pytest.approx(10 * 10 / 20)
    assert ten["p_value"] == pytest.approx(float(hypergeom_tail_by_definition(4, 20, 10, 10)), rel=1e-14)

    # Spearman by hand: ascending ranks of A are 20 - f; of B, f=10 -> 20, f=0,11 -> 18.5, f=1 -> 17,
    # f=2,15 -> 15.5, f=5 -> 14, f=16 -> 13, f=17 -> 12, f=18 -> 11, the ten tied heads -> 5.5
    rank_a = [20 - f for f in range(20)]
    rank_b = [{10: 20, 0: 18.5, 11: 18.5, 1: 17, 2: 15.5, 15: 15.5, 5: 14, 16: 13, 17: 12, 18: 11}.get(f, 5.5)
              for f in range(20)]
    assert pair["spearman"] == pytest.approx(np.corrcoef(rank_a, rank_b)[0, 1], rel=1e-12)

    written = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert "provenance" in written and written["pairs"] == result["pairs"]
    assert written["runs"][0]["model"] == "model-a" and written["runs"][0]["ablation"] == "ua"
    assert written["settings"]["top_k"] == "5,10" and set(written["axes"]) >= {"runs.top_heads.K"}
    assert (tmp_path / "out" / "compare_heads.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "llama vs vicuna" in printed and "p_value" in printed and "spearman" in printed


def test_sahara_and_dataset_level_ships_inputs_use_their_single_head_tables(tmp_path):
    """A sahara.json is ranked by step 1 (its later steps' None cells do not matter); a dataset-level ships.json
    by its [L, N] scores. Both hold B here, so the overlaps with A are those of the ships test."""
    paths = [ships_file(tmp_path / "a" / "ships.json", A),
             sahara_file(tmp_path / "b" / "sahara.json", B),
             ships_file(tmp_path / "c" / "ships.json", B, level="dataset")]
    runs = f"llama={paths[0]},vicuna-sahara={paths[1]},vicuna-ds={paths[2]}"
    result = job.run(config_of(runs=runs, out=str(tmp_path / "out")))
    assert [run["label"] for run in result["runs"]] == ["llama", "vicuna-sahara", "vicuna-ds"]
    assert [run["source"] for run in result["runs"]] == ["mean", "steps[0].scores", "scores"]
    assert result["runs"][1]["ablation"] == "sc" and result["runs"][1]["model"] == "model-b"
    assert [pair["runs"] for pair in result["pairs"]] == [["llama", "vicuna-sahara"], ["llama", "vicuna-ds"],
                                                         ["vicuna-sahara", "vicuna-ds"]]
    for pair in result["pairs"][:2]:
        assert [pair["top_k"][k]["overlap"] for k in ("5", "10", "20")] == [3, 4, 20]
        assert pair["top_k"]["20"]["p_value"] == 1.0 and pair["top_k"]["20"]["expected"] == 20.0
    assert result["pairs"][2]["spearman"] == pytest.approx(1.0)
    assert (tmp_path / "out" / "compare_heads.png").exists()


def test_runs_of_different_shapes_are_refused_naming_files_and_shapes(tmp_path):
    small = ships_file(tmp_path / "a" / "ships.json", A)
    other = ships_file(tmp_path / "b" / "ships.json", np.arange(20.0).reshape(5, 4))
    with pytest.raises(JaxheadsError, match=r"different shapes.*a/ships.json: 4 layers x 5 heads.*"
                                            r"b/ships.json: 5 layers x 4 heads"):
        job.run(config_of(runs=f"{small},{other}", out=str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()


def test_unrankable_or_unusable_inputs_are_errors(tmp_path):
    good = ships_file(tmp_path / "a" / "ships.json", A)
    holes = json.loads((tmp_path / "a" / "ships.json").read_text())
    holes["mean"][1][2] = None
    (tmp_path / "holes").mkdir()
    (tmp_path / "holes" / "ships.json").write_text(json.dumps(holes))
    with pytest.raises(JaxheadsError, match=r"1 NaN, None or infinite cells \(layer, head\) \(1, 2\)"):
        job.run(config_of(runs=f"{good},{tmp_path / 'holes' / 'ships.json'}", out=str(tmp_path / "out")))
    (tmp_path / "other.json").write_text(json.dumps({"asr": 0.5}))
    with pytest.raises(JaxheadsError, match="neither a ships.json"):
        job.run(config_of(runs=f"{good},{tmp_path / 'other.json'}", out=str(tmp_path / "out")))
    with pytest.raises(JaxheadsError, match="does not exist"):
        job.run(config_of(runs=f"{good},{tmp_path / 'missing.json'}", out=str(tmp_path / "out")))
    with pytest.raises(JaxheadsError, match="--runs must be two or more result files"):
        job.run(config_of(runs=good, out=str(tmp_path / "out")))
    with pytest.raises(JaxheadsError, match="--top_k must be comma-separated integers"):
        job.run(config_of(runs=f"{good},{good}", top_k="5,ten"))
    with pytest.raises(JaxheadsError, match="--top_k 25 exceeds the 20 heads"):
        job.run(config_of(runs=f"x={good},y={good}", top_k="25", out=str(tmp_path / "out")))
    with pytest.raises(JaxheadsError, match="label them apart with NAME=PATH"):
        job.run(config_of(runs=f"x={good},x={good}", out=str(tmp_path / "out")))


def test_default_labels_fall_back_to_paths_when_folder_names_clash(tmp_path):
    first = ships_file(tmp_path / "one" / "run" / "ships.json", A)
    second = ships_file(tmp_path / "two" / "run" / "ships.json", B)
    entries = job.parse_runs(f"{first}, named={second}")
    assert entries == [(None, first), ("named", second)]
    assert job.labels(entries) == ["run", "named"]
    assert job.labels(job.parse_runs(f"{first},{second}")) == [first, second]


def test_the_command_writes_its_files(tmp_path):
    command = shutil.which("jaxheads", path=os.path.dirname(sys.executable)) or shutil.which("jaxheads")
    assert command, "the jaxheads command is not installed: pip install -e ."
    ships_file(tmp_path / "llama" / "ships.json", A)
    ships_file(tmp_path / "vicuna" / "ships.json", B)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([command, "compare", "--runs=llama/ships.json,vicuna/ships.json", "--top_k=10",
                             "--out=cmp", "--compilation_cache=false"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "cmp" / "compare.json").exists() and (tmp_path / "cmp" / "compare_heads.png").exists()
    written = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert written["pairs"][0]["top_k"]["10"]["overlap"] == 4
    assert written["provenance"]["argv"][1] == "compare"
    # The files as arguments; the default --top_k=5,10,20 with a k above the 20 heads skipped, and said.
    positional = subprocess.run([command, "compare", "llama/ships.json", "vicuna/ships.json", "--top_k=5,10,20,40",
                                 "--out=cmp2", "--compilation_cache=false"], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=300)
    assert positional.returncode == 0, positional.stderr
    assert "skipping --top_k 40: more than the 20 heads (4 layers x 5 heads)" in positional.stdout
    again = json.loads((tmp_path / "cmp2" / "compare.json").read_text())
    assert again["top_k"] == [5, 10, 20] and again["skipped_top_k"] == [40]
    assert again["pairs"][0]["top_k"]["10"] == written["pairs"][0]["top_k"]["10"]
    both = subprocess.run([command, "compare", "llama/ships.json", "--runs=vicuna/ships.json"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert both.returncode == 2 and "give --runs or the file(s) llama/ships.json, not both" in both.stderr
