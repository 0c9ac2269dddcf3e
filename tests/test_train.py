"""The trainer: memorisation, exact resume after an interrupt, LoRA merge, Surgery, safetensors export, bad input."""

import jax
import numpy as np
import pytest
import transformers
from conftest import TINY_CONFIGS, hf_logits

import jaxheads
from jaxheads import sink
from jaxheads.errors import JaxheadsError
from jaxheads.train import CheckpointError, Example, PairSet, TrainConfig, export_safetensors, train, trained_model
from jaxheads.train import lora as lora_lib
from jaxheads.train.data import pad_right, sample_indices
from jaxheads.train.trainer import response_cross_entropy


def _examples(count, seed, prompt_length=4, answer_length=6, vocab=128):
    rng = np.random.default_rng(seed)
    return [Example(tuple(rng.integers(3, vocab, prompt_length + answer_length + i % 3).tolist()), prompt_length)
            for i in range(count)]


def _pairs(count=4, seed=1):
    return PairSet(_examples(count, seed), _examples(count, seed + 100, answer_length=3))


def _weights_equal(a, b):
    return all(np.array_equal(a[name], b[name]) for name in a)


def test_loss_falls_on_a_memorisation_task(tiny_checkpoint, tmp_path):
    model = jaxheads.load(tiny_checkpoint("llama_mha")[1])
    config = TrainConfig(steps=30, batch_size=4, learning_rate=1e-2, warmup_steps=0, schedule="constant", save_every=100)
    result = train(model, _examples(4, seed=0), config, tmp_path)
    losses = [record["ce"] for record in result.records]
    assert result.step == 30 and len(losses) == 30
    assert losses[-1] < 0.2 * losses[0]
    assert (tmp_path / "metrics.jsonl").exists()


def test_loss_is_taken_on_response_tokens_only():
    batch = pad_right([Example((5, 6, 7, 8), 2), Example((5, 6, 9), 2)], pad=0, max_length=16)
    assert batch.ids.shape == (2, 16)  # rounded up to 32, capped at max_length
    assert batch.response[0, :4].tolist() == [False, False, True, True] and batch.response[1, 2]
    logits = np.zeros((2, 16, 16), np.float32)
    logits[0, 1, 7] = logits[0, 2, 8] = logits[1, 1, 9] = 100.0  # right on every answer token, wrong elsewhere
    assert float(response_cross_entropy(logits, batch.ids, batch.response)) < 1e-6


def test_sample_order_is_a_fresh_permutation_per_epoch():
    first = np.concatenate([sample_indices(p, 3, 6, seed=0) for p in range(2)])
    second = np.concatenate([sample_indices(p, 3, 6, seed=0) for p in range(2, 4)])
    assert sorted(first) == sorted(second) == list(range(6)) and not np.array_equal(first, second)


@pytest.mark.parametrize("lora_rank", [0, 2])
def test_resume_after_interrupt_matches_an_uninterrupted_run(tiny_checkpoint, tmp_path, lora_rank):
    model = jaxheads.load(tiny_checkpoint("llama_gqa_llama3_rope_tied")[1])
    config = TrainConfig(steps=6, batch_size=2, grad_accum=2, learning_rate=5e-3, warmup_steps=2, save_every=2,
                         surgery_lambda=10.0, sink_every=3, lora_rank=lora_rank, lora_targets=("q", "v", "down"))
    examples, pairs = _examples(5, seed=2), _pairs()
    full = train(model, examples, config, tmp_path / "full", pairs)

    def interrupt(step, record):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(model, examples, config, tmp_path / "resumed", pairs, on_step=interrupt)
    assert (tmp_path / "resumed" / "checkpoints" / "6").exists()  # micro-step 6 = step 3, saved on Ctrl-C
    resumed = train(model, examples, config, tmp_path / "resumed", pairs)
    assert resumed.step == full.step == 6
    assert _weights_equal(full.weights, resumed.weights)
    assert [r["loss"] for r in resumed.records if "loss" in r] == [r["loss"] for r in full.records if "loss" in r]
    assert [r["step"] for r in full.records if "positive_heads" in r] == [0, 3, 6]


def _penalty_and_count(module, harmful, safe):
    """The Surgery penalty and the positive-divergence head count of `module`, from `jaxheads.sink` directly."""
    h, s = pad_right(harmful, 0, 64), pad_right(safe, 0, 64)
    divergence = sink.sink_divergence(module, h.ids, h.mask, s.ids, s.mask)
    return float(sink.surgery_penalty(divergence)), int(sink.positive_heads(divergence))


def test_surgery_changes_training_and_zero_lambda_is_plain_sft(tiny_checkpoint, tmp_path):
    """λ = 0 with pairs is plain SFT; from the same start and batches, λ > 0 ends with a smaller penalty and fewer
    positive heads than λ = 0 (measured by `jaxheads.sink` on the final weights), and each logged loss is
    ce + λ·penalty."""
    model = jaxheads.load(tiny_checkpoint("llama_mha")[1])
    examples = _examples(4, seed=3)
    # short harmful sequences against long safe ones: the sink gets more attention on the harmful side (d > 0)
    pairs = PairSet(_examples(4, seed=11, prompt_length=2, answer_length=3),
                    _examples(4, seed=12, prompt_length=2, answer_length=12))
    base = {"steps": 4, "batch_size": 2, "learning_rate": 1e-2, "warmup_steps": 0, "schedule": "constant",
            "save_every": 10, "surgery_batch": 4}
    plain = train(model, examples, TrainConfig(**base), tmp_path / "plain")
    zero = train(model, examples, TrainConfig(**base, sink_every=4), tmp_path / "zero", pairs)
    surgery = train(model, examples, TrainConfig(**base, sink_every=4, surgery_lambda=50.0), tmp_path / "surgery",
                    pairs)
    assert _weights_equal(plain.weights, zero.weights)
    start_penalty, start_count = _penalty_and_count(model.module, pairs.harmful, pairs.safe)
    zero_penalty, zero_count = _penalty_and_count(trained_model(model, zero.weights).module, pairs.harmful, pairs.safe)
    surgery_penalty, surgery_count = _penalty_and_count(trained_model(model, surgery.weights).module, pairs.harmful,
                                                        pairs.safe)
    assert start_penalty > 0 and zero_count > 0
    assert surgery_penalty < zero_penalty and surgery_count < zero_count
    logged = {name: [r["positive_heads"] for r in result.records if "positive_heads" in r]
              for name, result in (("zero", zero), ("surgery", surgery))}
    assert logged == {"zero": [start_count, zero_count], "surgery": [start_count, surgery_count]}
    steps = [record for record in surgery.records if "step" in record and record["step"] > 0]
    assert len(steps) == 4
    for record in steps:
        np.testing.assert_allclose(record["loss"], record["ce"] + 50.0 * record["penalty"], rtol=1e-6)
    penalties = [record["penalty"] for record in surgery.records if "penalty" in record]
    assert penalties[-1] < penalties[0]


def test_lora_merge_equals_the_unmerged_projection(tiny_checkpoint):
    model = jaxheads.load(tiny_checkpoint("llama_gqa_llama3_rope_tied")[1])
    cfg = model.config
    weights = {name: np.asarray(getattr(model.module, name)[...]) for name in ("q", "o", "down")}
    lora = lora_lib.LoraConfig(rank=3, alpha=6.0, targets=("q", "o", "down"))
    adapters = lora_lib.init_adapters(lora, weights, jax.random.key(0))
    adapters = jax.tree.map(lambda a: a + 0.1 * np.random.default_rng(0).standard_normal(a.shape), adapters)
    merged = lora_lib.merge(lora, weights, adapters)
    x = np.random.default_rng(1).standard_normal((5, cfg.hidden_size)).astype(np.float32)
    layer = 1
    for name, inputs in (("q", x), ("o", x[:, :cfg.num_heads * cfg.head_dim]),
                         ("down", np.random.default_rng(2).standard_normal((5, cfg.intermediate_size)))):
        w = weights[name][layer].reshape(inputs.shape[1], -1)
        a, b = np.asarray(adapters[name]["a"][layer]), np.asarray(adapters[name]["b"][layer])
        unmerged = inputs @ w + lora.scale * (inputs @ a) @ b
        np.testing.assert_allclose(inputs @ np.asarray(merged[name][layer]).reshape(inputs.shape[1], -1), unmerged,
                                   atol=1e-4, rtol=1e-4)


def test_lora_training_keeps_base_weights_outside_targets(tiny_checkpoint, tmp_path):
    model = jaxheads.load(tiny_checkpoint("llama_mha")[1])
    config = TrainConfig(steps=4, batch_size=2, learning_rate=1e-2, warmup_steps=0, lora_rank=2, lora_targets=("q", "up"))
    result = train(model, _examples(4, seed=4), config, tmp_path)
    for name, value in result.weights.items():
        base = np.asarray(getattr(model.module, name)[...])
        assert np.array_equal(value, base) != (name in ("q", "up")), name


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_export_loads_in_jaxheads_and_transformers(tiny_checkpoint, tmp_path, name):
    _, directory = tiny_checkpoint(name)
    model = jaxheads.load(directory)
    weights = {key: np.asarray(getattr(model.module, key)[...]) * 1.01 for key in _param_names(model)}
    export_safetensors(model.config, weights, tmp_path / "export")
    ids = np.random.default_rng(0).integers(3, 128, (2, 11))
    mask = np.ones_like(ids, bool)
    mask[1, :3] = False
    expected = np.asarray(jaxheads.forward(trained_model(model, weights), ids, mask))
    reloaded = jaxheads.load(tmp_path / "export")
    assert reloaded.config == model.config
    np.testing.assert_array_equal(np.asarray(jaxheads.forward(reloaded, ids, mask)), expected)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "export", attn_implementation="eager")
    np.testing.assert_allclose(hf_logits(hf_model.float().eval(), ids, mask)[mask], expected[mask], atol=1e-4, rtol=0)


def _param_names(model):
    from jaxheads.models.params import shapes

    return list(shapes(model.config))


def test_a_checkpoint_resumes_only_the_run_that_wrote_it(tiny_checkpoint, tmp_path):
    """Another model, other examples, or a finished run asked for other steps: each is refused with what differs."""
    config = TrainConfig(steps=1, batch_size=2)
    examples = _examples(2, seed=5)
    train(jaxheads.load(tiny_checkpoint("llama_mha")[1]), examples, config, tmp_path)
    other_model = jaxheads.load(tiny_checkpoint("llama_gqa_llama3_rope_tied")[1])
    with pytest.raises(CheckpointError, match=r"another training run; what differs .*model\.files\.config\.json"):
        train(other_model, examples, config, tmp_path)
    model = jaxheads.load(tiny_checkpoint("llama_mha")[1])
    with pytest.raises(CheckpointError, match=r"examples: "):
        train(model, _examples(2, seed=6), config, tmp_path)
    with pytest.raises(CheckpointError, match=r"settings\.steps: 1 -> 2"):
        train(model, examples, TrainConfig(steps=2, batch_size=2), tmp_path)
    with pytest.raises(CheckpointError, match=r"settings\.learning_rate"):
        train(model, examples, TrainConfig(steps=1, batch_size=2, learning_rate=1e-3), tmp_path)
    assert train(model, examples, TrainConfig(steps=1, batch_size=2, save_every=7), tmp_path).step == 1


def test_bad_settings_are_clear_errors(tiny_checkpoint, tmp_path):
    with pytest.raises(JaxheadsError, match="surgery_lambda must be >= 0"):
        TrainConfig(surgery_lambda=-1.0)
    with pytest.raises(JaxheadsError, match="lora_rank must be >= 0"):
        TrainConfig(lora_rank=-2)
    with pytest.raises(JaxheadsError, match="LoRA targets"):
        TrainConfig(lora_rank=2, lora_targets=("q", "mlp"))
    model = jaxheads.load(tiny_checkpoint("llama_mha")[1])
    with pytest.raises(JaxheadsError, match="needs .harmful, safe. pairs"):
        train(model, _examples(2, seed=6), TrainConfig(steps=1, surgery_lambda=1.0), tmp_path)


def test_surgery_samples_are_drawn_per_side_unless_paired():
    unpaired = PairSet(_examples(5, seed=7), _examples(3, seed=8))
    key = jax.random.key(0)
    harmful, safe = unpaired.draw(key, 3)
    assert len(harmful) == len(set(harmful)) == 3 and all(0 <= i < 5 for i in harmful)
    assert sorted(safe) == [0, 1, 2]  # 3 drawn from 3 without replacement
    assert unpaired.draw(key, 3) == (harmful, safe)  # a function of the key, so resumed runs draw the same
    many = [unpaired.draw(jax.random.key(seed), 2) for seed in range(20)]
    assert any(h != s for h, s in many)  # the two sides are drawn independently
    paired = PairSet(_examples(4, seed=7), _examples(4, seed=8), paired=True)
    assert all(h == s for h, s in (paired.draw(jax.random.key(seed), 2) for seed in range(5)))
    with pytest.raises(JaxheadsError, match="as many of each"):
        PairSet(_examples(4, seed=7), _examples(3, seed=8), paired=True)
    batch_h, batch_s = unpaired.batches([4], [0, 2], pad=0, max_length=32)
    assert batch_h.ids.shape[0] == 1 and batch_s.ids.shape[0] == 2
