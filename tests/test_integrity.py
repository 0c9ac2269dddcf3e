"""No silent wrong result (issue 22): what a run's results depend on is in its fingerprint by content (the
tokenizer, the token ids, the weights' bytes), head files are checked against the model they are applied to,
readers ignore a byte order mark, and every command's output folder refuses a rerun with other settings."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import jaxheads
from jaxheads import io
from jaxheads.configs import compare as compare_config
from jaxheads.configs import evaluate as evaluate_config
from jaxheads.configs import patterns as patterns_config
from jaxheads.configs import sahara_asr as sahara_asr_config
from jaxheads.configs import ships as ships_config
from jaxheads.configs import utility as utility_config
from jaxheads.data.loaders import load_prompt_rows
from jaxheads.errors import DataError, JaxheadsError
from jaxheads.jobs import compare, evaluate, patterns, sahara_asr, ships, utility
from jaxheads.jobs.heads import read_head_file

LOG = "ships.partial.jsonl"


def config_of(module, **values):
    config = module.get_config()
    config.update(values)
    return config


@pytest.fixture(scope="module")
def scanned(tiny_model_with_tokenizer, tmp_path_factory):
    """A folder holding a copy of the tiny model, a finished query-level ships run on it (4 prompts in batches of
    2) and a copy of that run cut after its first batch, as a run killed mid-scan leaves it; the paths are relative
    to the folder, so that a copy of it (`fresh_copy`) is the same run."""
    root = tmp_path_factory.mktemp("scanned")
    shutil.copytree(tiny_model_with_tokenizer, root / "model")
    settings = dict(model="model", limit=4, batch_size=2)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        ships.run(config_of(ships_config, **settings, out="full"))
    shutil.copytree(root / "full", root / "cut")
    log = root / "cut" / LOG
    log.write_text(log.read_text().splitlines()[0] + "\n")
    for name in ("ships.json", "ships.csv", "ships_heatmap.png"):
        (root / "cut" / name).unlink()
    return root, settings


def fresh_copy(scanned, tmp_path, monkeypatch):
    """The settings of the `scanned` run, in a copy of its folder that is now the working directory."""
    root, settings = scanned
    for name in ("model", "full", "cut"):
        shutil.copytree(root / name, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    return settings


def permute_tokenizer(model_dir) -> None:
    """tokenizer.json with the same vocabulary and the ids of its words permuted (special tokens kept)."""
    path = model_dir / "tokenizer.json"
    content = json.loads(path.read_text())
    vocab = content["model"]["vocab"]
    words = sorted((token for token, index in vocab.items() if index >= 6), key=vocab.get)
    ids = [vocab[token] for token in words]
    for token, index in zip(words, np.random.default_rng(0).permutation(ids)):
        vocab[token] = int(index)
    path.write_text(json.dumps(content))


def test_a_permuted_tokenizer_is_another_run_and_not_resumed(scanned, tmp_path, monkeypatch):
    settings = fresh_copy(scanned, tmp_path, monkeypatch)
    model_dir = tmp_path / "model"
    before = jaxheads.load(model_dir).tokenizer("How do I pick a lock").input_ids
    permute_tokenizer(model_dir)
    assert jaxheads.load(model_dir).tokenizer("How do I pick a lock").input_ids != before  # other ids, same text
    for out in ("full", "cut"):  # a rerun of the finished run, and the resume of the killed one
        with pytest.raises(JaxheadsError, match=r"data\.prompts\.ids_sha256: .*models\.model\.files\.tokenizer\.json: "):
            ships.run(config_of(ships_config, **settings, out=str(tmp_path / out)))
    assert len((tmp_path / "cut" / LOG).read_text().splitlines()) == 1  # nothing appended to the old rows


def test_weights_swapped_with_the_same_size_and_mtime_are_not_resumed(scanned, tmp_path, monkeypatch):
    settings = fresh_copy(scanned, tmp_path, monkeypatch)
    weights = tmp_path / "model" / "model.safetensors"
    stat = weights.stat()
    other = bytearray(weights.read_bytes())
    other[len(other) // 2:len(other) // 2 + 4096] = bytes(4096)
    weights.write_bytes(bytes(other))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # what cp -p, rsync -t or a tar restore keep
    assert weights.stat().st_size == stat.st_size
    with pytest.raises(JaxheadsError, match=r"models\.model\.weights"):
        ships.run(config_of(ships_config, **settings, out=str(tmp_path / "cut")))


def test_the_model_path_is_normalised_and_verify_weights_adds_a_full_hash(scanned, tmp_path, monkeypatch):
    settings = fresh_copy(scanned, tmp_path, monkeypatch)
    resumed = ships.run(config_of(ships_config, **{**settings, "model": settings["model"] + "/"},
                                  verify_weights=True, out=str(tmp_path / "cut")))
    assert resumed["scores"] == io.read_json(tmp_path / "full" / "ships.json")["scores"]
    recorded = io.read_json(tmp_path / "cut" / "fingerprint.json")["models"]["model"]
    weights = tmp_path / "model" / "model.safetensors"
    assert recorded["verified"] == {"model.safetensors": "sha256:" + __import__("hashlib").sha256(
        weights.read_bytes()).hexdigest()}
    ships.run(config_of(ships_config, **settings, out=str(tmp_path / "cut")))  # without the full hash: the same run


def test_sampled_digest_sees_4_mb_zeroed_in_a_large_file_and_the_full_hash_sees_one_byte(tmp_path):
    from jaxheads.weights import digest

    path = tmp_path / "model.safetensors"
    header = json.dumps({"w": {"dtype": "F32", "shape": [16 * 2**20], "data_offsets": [0, 64 * 2**20]}}).encode()
    rng = np.random.default_rng(0)
    path.write_bytes(len(header).to_bytes(8, "little") + header + rng.bytes(64 * 2**20))
    sampled, full = digest.file_digest(path), digest.file_digest(path, full=True)
    assert sampled.startswith("sampled:") and full.startswith("sha256:")
    stat = path.stat()
    with open(path, "r+b") as handle:
        handle.seek(8 + len(header) + 37 * 2**20 + 12345)
        handle.write(bytes(4 * 2**20))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert digest.file_digest(path) != sampled
    # one byte between two sampled blocks: only the full hash sees it
    with open(path, "r+b") as handle:
        handle.seek(8 + len(header) + 37 * 2**20 + 12345)
        handle.write(rng.bytes(4 * 2**20))
    before = digest.file_digest(path), digest.file_digest(path, full=True)
    offset = digest.BLOCK + digest.stride(path.stat().st_size) // 2
    with open(path, "r+b") as handle:
        handle.seek(offset)
        value = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([value[0] ^ 0xFF]))
    assert digest.file_digest(path) == before[0] and digest.file_digest(path, full=True) != before[1]


# ---- head files applied to another model ----

@pytest.fixture(scope="module")
def other_models(tmp_path_factory, tiny_model_with_tokenizer):
    """Two models unlike the tiny one: one with 2 layers, and one of its shape with other weights."""
    from conftest import save_word_llama

    from jaxheads.data.loaders import load_builtin_records

    texts = [r["prompt"] for r in load_builtin_records("harmful")]
    root = tmp_path_factory.mktemp("others")
    return {"shallow": save_word_llama(root / "shallow", texts, num_hidden_layers=2),
            "same_shape": save_word_llama(root / "same_shape", texts, seed=5)}


@pytest.fixture(scope="module")
def head_files(scanned, tmp_path_factory):
    """The tiny model's ships.json, a sahara.json naming heads of it (its model fields as the ships run recorded
    them) and a dataset-level ships.json of it."""
    root, _ = scanned
    folder = tmp_path_factory.mktemp("heads")
    result = io.read_json(root / "full" / "ships.json")
    fields = {key: result[key] for key in ("model", "model_fingerprint", "num_layers", "num_heads") if key in result}
    files = {"ships": root / "full" / "ships.json", "sahara": folder / "sahara.json",
             "dataset": folder / "dataset_ships.json"}
    io.atomic_write_json(files["sahara"], {**fields, "heads": [[2, 1], [0, 3]]})
    io.atomic_write_json(files["dataset"], {**result, "level": "dataset", "scores": result["mean"]})
    return files


def test_a_head_file_of_another_model_is_a_clear_error(head_files, other_models, tmp_path):
    ships_json, sahara_json = str(head_files["ships"]), str(head_files["sahara"])
    jobs = [(evaluate, evaluate_config, dict(top_k_from=ships_json)),
            (evaluate, evaluate_config, dict(ablate_from=sahara_json)),
            (sahara_asr, sahara_asr_config, dict(sahara=sahara_json)),
            (sahara_asr, sahara_asr_config, dict(top_k_from=ships_json)),
            (utility, utility_config, dict(sahara=sahara_json)),
            (patterns, patterns_config, dict(heads_from=ships_json))]
    for name, wanted in (("shallow", r"3 layers x 4 heads\), not of the model this run loads, .* \(2 layers x 4"),
                         ("same_shape", "whose files differ from those of the model this run loads")):
        for index, (job, config_module, values) in enumerate(jobs):
            out = tmp_path / f"{name}{index}"
            with pytest.raises(DataError, match=wanted):
                job.run(config_of(config_module, model=str(other_models[name]), out=str(out), **values))
            assert not (out / "fingerprint.json").exists()


def test_head_files_that_hold_the_wrong_kind_of_heads_are_clear_errors(scanned, head_files, tmp_path):
    model = str(scanned[0] / "model")
    with pytest.raises(DataError, match="--ablate_from=.* is a ships.json .* no list of \\[layer, head\\] pairs"):
        evaluate.run(config_of(evaluate_config, model=model, ablate_from=str(head_files["ships"]),
                               out=str(tmp_path / "a")))
    with pytest.raises(DataError, match=r"--top_k_from=.* holds no query-level scores .*\(its level is dataset\)"):
        evaluate.run(config_of(evaluate_config, model=model, top_k_from=str(head_files["dataset"]),
                               out=str(tmp_path / "b")))
    with pytest.raises(DataError, match="--top_k_from=.* holds no query-level scores"):
        sahara_asr.run(config_of(sahara_asr_config, model=model, top_k_from=str(head_files["sahara"]),
                                 out=str(tmp_path / "c")))
    # the same files at another spelling of the path, in another dtype: the same model
    same = jaxheads.load(f"{scanned[0] / 'model'}/", dtype="bfloat16")
    assert read_head_file(str(head_files["ships"]), "top_k_from", same, need="query")["level"] == "query"


# ---- readers ----

def test_a_csv_with_a_byte_order_mark_picks_the_right_column(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes("prompt,input\nthe prompt,the input\n".encode("utf-8-sig"))
    assert load_prompt_rows(str(path)) == [(0, "the prompt")]
    path.write_bytes("goal,target\nthe goal,Sure, here is\n".encode("utf-8-sig"))
    assert load_prompt_rows(str(path)) == [(0, "the goal")]
    json_path = tmp_path / "bom.json"
    json_path.write_bytes(json.dumps([{"prompt": "a json prompt"}]).encode("utf-8-sig"))
    assert load_prompt_rows(str(json_path)) == [(0, "a json prompt")]
    assert io.read_json(json_path) == [{"prompt": "a json prompt"}]


# ---- every command's output folder ----

def test_compare_refuses_a_rerun_with_other_settings(scanned, head_files, tmp_path):
    runs = f"query={head_files['ships']},dataset={head_files['dataset']}"
    out = tmp_path / "out"
    compare.run(config_of(compare_config, runs=runs, top_k="1,2", out=str(out)))
    compare.run(config_of(compare_config, runs=runs, top_k="1,2", out=str(out)))  # the same run: written again
    with pytest.raises(DataError, match=r"holds the results of another run; .*settings\.top_k: \"1,2\" -> \"3\""):
        compare.run(config_of(compare_config, runs=runs, top_k="3", out=str(out)))


def test_patterns_refuses_a_rerun_with_other_settings(scanned, tmp_path):
    settings = dict(model=str(scanned[0] / "model"), limit=2, out=str(tmp_path / "out"))
    patterns.run(config_of(patterns_config, heads="0:1", **settings))
    assert io.read_json(tmp_path / "out" / "fingerprint.json")["job"] == "patterns"
    with pytest.raises(DataError, match=r"settings\.heads: \"0:1\" -> \"2:3\""):
        patterns.run(config_of(patterns_config, heads="2:3", **settings))


def test_a_failed_run_that_did_no_work_leaves_the_folder_free(tmp_path):
    with pytest.raises(RuntimeError):
        with io.RunFolder(tmp_path) as folder:
            folder.check({"settings": {"a": 1}})
            raise RuntimeError("failed before any result")
    assert not (tmp_path / "fingerprint.json").exists()
    with pytest.raises(RuntimeError):
        with io.RunFolder(tmp_path) as folder:
            folder.check({"settings": {"a": 2}})  # another run may use the folder
            (tmp_path / "part.jsonl").write_text("{}\n")
            raise RuntimeError("failed after some work")
    assert io.read_json(tmp_path / "fingerprint.json") == {"settings": {"a": 2}}  # its work stays pinned


# ---- the compilation cache ----

COMPILE_ONCE = """
import jax
from jaxheads.launch.common import cache_compilations
cache_compilations()
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
print(jax.jit(lambda x: x * 2 + 1)(jax.numpy.arange(3.0)))
"""


def test_an_unreadable_compilation_cache_entry_is_compiled_again_and_replaced(tmp_path):
    env = {**os.environ, "JAXHEADS_CACHE_DIR": str(tmp_path), "JAX_PLATFORMS": "cpu"}

    def compile_once() -> str:
        done = subprocess.run([sys.executable, "-c", COMPILE_ONCE], env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0 and done.stdout.strip() == "[1. 3. 5.]", done.stderr
        return done.stderr

    compile_once()
    written = sorted((tmp_path / "xla").glob("*-cache"))
    assert written
    for entry in written:
        entry.write_bytes(b"\xff" * entry.stat().st_size)  # damaged in place
    stderr = compile_once()
    assert "Error reading persistent compilation cache entry" in stderr
    for entry in written:
        assert f"jaxheads: removed the unreadable compilation cache entry {entry}" in stderr
        assert entry.read_bytes() != b"\xff" * entry.stat().st_size  # compiled again and written in its place
    assert "compilation cache" not in compile_once()  # read back without a warning
