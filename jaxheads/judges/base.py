"""What every model judge shares (docs/judges.md): its checkpoint loaded onto a mesh (pickle-only checkpoints refused
with how to convert them), batched forward passes read at the last position or through a sequence-classification
head, greedy decoding of a few tokens, template files read and hashed, and chat templates rendered once and
tokenized without a second BOS.

A judge is called on (prompts, responses) and returns `(verdicts, scores)`: `verdicts[i]` is True when the judge
finds response i harmful (an attack success), `scores[i]` its harm score (a probability for most judges; each
judge's docstring says which). `Judge.judge` returns the `Judgement` with each row's details as well."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import pathlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from tqdm import tqdm

from jaxheads import tokens
from jaxheads.errors import DataError, LoadError
from jaxheads.generation import generate
from jaxheads.loading import load
from jaxheads.models.decoder import positions_from_mask, prompt_attention_mask
from jaxheads.placement import split_on_mesh
from jaxheads.sharding import DATA, place_rows, to_host

PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.bin", "consolidated.00.pth")
CONVERT = ("convert it once with transformers: `python -c \"import transformers as t; "
           "m = t.{cls}.from_pretrained('DIR'); m.save_pretrained('OUT', safe_serialization=True); "
           "t.AutoTokenizer.from_pretrained('DIR').save_pretrained('OUT')\"` and pass OUT")


@dataclasses.dataclass
class Judgement:
    """A judge's reading of (prompt, response) pairs: `verdicts` (True = harmful, an attack success), `scores`
    (the judge's harm score) and one dict of details per pair (what the judge read, e.g. its label or text)."""

    verdicts: list[bool]
    scores: np.ndarray
    details: list[dict]


def check_pairs(prompts: Sequence[str], responses: Sequence[str]) -> tuple[list[str], list[str]]:
    prompts, responses = [str(p) for p in prompts], [str(r) for r in responses]
    if len(prompts) != len(responses):
        raise DataError(f"{len(prompts)} prompts but {len(responses)} responses; the judge needs one response per "
                        "prompt")
    return prompts, responses


def load_checkpoint(directory: str | os.PathLike, kind: str, dtype: str = "float32", mesh: Mesh | None = None,
                    model_class: str = "AutoModelForCausalLM", sharding: str | None = None):
    """The judge's checkpoint folder as a jaxheads `Model` on `mesh` (one device without). A folder with pickle
    weights only (`pytorch_model.bin`, ...) is refused with how to convert it to safetensors."""
    path = pathlib.Path(os.path.expanduser(str(directory)))
    if not path.is_dir():
        raise LoadError(f"--judge={kind}:{directory}: no such checkpoint folder")
    if not list(path.glob("*.safetensors")) and any((path / name).exists() for name in PICKLE_WEIGHTS):
        raise LoadError(f"--judge={kind}:{directory} holds pickle weights only, which jaxheads does not unpickle; "
                        + CONVERT.format(cls=model_class))
    model = load(str(path), dtype=dtype, mesh=mesh, sharding=sharding if mesh is not None else None)
    if model.tokenizer is None:
        raise LoadError(f"--judge={kind}:{directory} has no tokenizer (tokenizer.json or tokenizer_config.json)")
    return model


def read_template(path: str | os.PathLike | None, kind: str) -> tuple[pathlib.Path, bytes]:
    """The bytes of a `--judge_template` file and its resolved path; a missing one is a one-line error."""
    if not path:
        raise DataError(f"--judge={kind} needs --judge_template=FILE (docs/judges.md names the file and revision)")
    file = pathlib.Path(os.path.expanduser(str(path)))
    if not file.is_file():
        raise DataError(f"--judge_template={path}: no such file")
    return file, file.read_bytes()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def render_chat(tokenizer, conversation: list[dict], **kwargs) -> str:
    """The checkpoint's own chat template rendered as text (no generation prompt added: a judge's template ends
    where the answer starts)."""
    if not getattr(tokenizer, "chat_template", None):
        raise LoadError("the judge's tokenizer has no chat_template (tokenizer_config.json or chat_template.jinja)")
    return tokenizer.apply_chat_template(conversation, tokenize=False, **kwargs)


def encode_rendered(tokenizer, text: str) -> list[int]:
    """Token ids of a rendered template without the tokenizer's special tokens, as `apply_chat_template` tokenizes
    it: the template writes its own BOS, and adding the tokenizer's would put two in front (Llama Guard's pitfall)."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def single_token(tokenizer, text: str, what: str) -> int:
    """The id of a token spelled `text` in the vocabulary (as `tokenizer.vocab[text]`), else of the one-token
    encoding of `text`; an error when neither exists."""
    vocab = tokenizer.get_vocab()
    if text in vocab:
        return int(vocab[text])
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise LoadError(f"the judge's tokenizer has no single token for {what} {text!r} (it encodes as {ids})")
    return int(ids[0])


@functools.partial(jax.jit, static_argnames="graphdef")
def _last_logits(graphdef, state, input_ids, attention_mask, token_ids):
    """The logits of `token_ids` `[B, K]` and the argmax over the whole vocabulary `[B]` at the last position of
    left-padded inputs."""
    model = nnx.merge(graphdef, state)
    mask = attention_mask.astype(bool)
    h = model.run_layers(model.embed_tokens(input_ids), positions_from_mask(mask),
                         prompt_attention_mask(model.config, mask)).h
    logits = model.logits(model.final_hidden(h[:, -1]))
    return logits[:, token_ids], jnp.argmax(logits, axis=-1)


@functools.partial(jax.jit, static_argnames=("graphdef", "pad_token_id"))
def _score_logits(graphdef, state, input_ids, attention_mask, pad_token_id):
    return nnx.merge(graphdef, state).classify(input_ids, attention_mask, pad_token_id)


class ModelJudge:
    """A judge that runs a checkpoint on the jaxheads core. Subclasses build each pair's token ids (`encode`)
    and read the model (`read`); this class batches the forward passes, `batch_size` rows at a time (sorted by
    length, padded to `tokens.CLASSIFIER_PAD_MULTIPLE`, split over the mesh's data axis), with a progress bar."""

    kind = "model"

    def __init__(self, model, source: str, batch_size: int = 16, mesh: Mesh | None = None, progress: bool = False):
        self.model, self.source, self.batch_size, self.mesh, self.progress = model, source, batch_size, mesh, progress
        self._split = None

    # what subclasses give
    def encode(self, prompts: list[str], responses: list[str]) -> list[list[int]]:
        raise NotImplementedError

    def read(self, rows: list[list[int]], prompts: list[str], responses: list[str]) -> Judgement:
        raise NotImplementedError

    def settings(self) -> dict:
        return {}

    # the shared machinery
    def judge(self, prompts: Sequence[str], responses: Sequence[str]) -> Judgement:
        prompts, responses = check_pairs(prompts, responses)
        if not prompts:
            return Judgement([], np.zeros(0), [])
        rows = self.encode(prompts, responses)
        context = self.model.config.max_position_embeddings
        too_long = [i for i, row in enumerate(rows) if len(row) > context]
        if too_long:
            raise DataError(f"{len(too_long)} judge inputs are longer than the {self.kind} judge's context of {context} "
                            f"tokens, at positions (0-based) {too_long[:10]}")
        return self.read(rows, prompts, responses)

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> tuple[list[bool], np.ndarray]:
        found = self.judge(prompts, responses)
        return found.verdicts, found.scores

    def describe(self) -> dict:
        """What a result file records about the judge."""
        return {"name": self.kind, "source": self.source, "model": self.model.name,
                "model_fingerprint": self.model.fingerprint, **self.settings()}

    def _placed(self):
        if self._split is None:
            self._split = nnx.split(self.model.module) if self.mesh is None else split_on_mesh(self.model.module,
                                                                                               self.mesh)
        return self._split

    def _batches(self, rows: list[list[int]], desc: str):
        """(chosen indices, ids, mask) per batch, rows sorted by length and left-padded."""
        row_multiple = 1 if self.mesh is None else self.mesh.shape[DATA]
        batch_size = tokens.batch_size_for(self.batch_size, row_multiple)
        order = np.argsort([len(row) for row in rows], kind="stable")
        pad = tokens.pad_id(self.model.tokenizer)
        starts = range(0, len(rows), batch_size)
        if self.progress:
            starts = tqdm(starts, desc=desc, unit="batch")
        for start in starts:
            chosen = order[start:start + batch_size]
            chunk = tokens.fill([rows[i] for i in chosen],
                                tokens.batch_rows(len(chosen), len(rows), batch_size, row_multiple))
            ids, mask = tokens.pad_left(chunk, pad, tokens.CLASSIFIER_PAD_MULTIPLE)
            if self.mesh is not None:
                ids, mask = place_rows((ids, mask), self.mesh)
            yield chosen, ids, mask

    def last_logits(self, rows: list[list[int]], token_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """The logits of `token_ids` `[P, K]` (float32) and the greedy next token `[P]` after each row."""
        graphdef, state = self._placed()
        wanted = jnp.asarray(list(token_ids), jnp.int32)
        logits = np.zeros((len(rows), len(token_ids)), np.float32)
        greedy = np.zeros(len(rows), np.int64)
        for chosen, ids, mask in self._batches(rows, f"{self.kind} judge"):
            found, best = _last_logits(graphdef, state, ids, mask, wanted)
            logits[chosen] = to_host(found)[:len(chosen)]
            greedy[chosen] = to_host(best)[:len(chosen)]
        return logits, greedy

    def score_logits(self, rows: list[list[int]], pad_token_id: int | None) -> np.ndarray:
        """A sequence classifier's label logits `[P, num_labels]` (float32)."""
        graphdef, state = self._placed()
        logits = np.zeros((len(rows), self.model.config.num_labels), np.float32)
        for chosen, ids, mask in self._batches(rows, f"{self.kind} judge"):
            logits[chosen] = to_host(_score_logits(graphdef, state, ids, mask, pad_token_id))[:len(chosen)]
        return logits

    def greedy_texts(self, rows: list[list[int]], max_new_tokens: int) -> list[str]:
        """The judge's greedy continuation of each row, decoded without special tokens."""
        found = generate(self.model, rows, max_new_tokens=max_new_tokens, batch_size=self.batch_size,
                         progress=self.progress, mesh=self.mesh)
        return found.texts


def two_way(logits: np.ndarray) -> np.ndarray:
    """softmax over two logits `[P, 2]` -> the probability of the first, float64."""
    logits = np.asarray(logits, np.float64)
    return 1.0 / (1.0 + np.exp(logits[:, 1] - logits[:, 0]))


def options_used(opts: dict[str, Any], allowed: Sequence[str], kind: str) -> None:
    """An option a judge does not take is an error naming it."""
    unknown = sorted(name for name, value in opts.items() if value not in (None, "") and name not in allowed)
    if unknown:
        flags = ", ".join(f"--{name}" for name in unknown)
        raise DataError(f"--judge={kind} does not take {flags}")
