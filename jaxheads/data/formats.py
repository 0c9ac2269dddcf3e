"""How a query becomes model input (docs/methods.md §5): the paper's template, the tokenizer's chat template, or raw."""

from __future__ import annotations

from jaxheads.errors import DataError

PROMPT_FORMATS = ("template", "chat", "direct")
TEMPLATE = "## Query:{query}\n## Answer:"


def format_prompt(query: str, prompt_format: str, tokenizer=None) -> str:
    """The prompt text for `query`: `## Query:{q}\\n## Answer:` (template), the tokenizer's chat template with
    a generation prompt (chat), or the query itself (direct)."""
    _check_query(query)
    _check_format(prompt_format)
    if prompt_format == "template":
        return TEMPLATE.format(query=query)
    if prompt_format == "chat":
        return _chat(tokenizer, [{"role": "user", "content": query}], add_generation_prompt=True)
    return query


def format_example(query: str, answer: str, prompt_format: str, tokenizer=None) -> tuple[str, str]:
    """(prompt_text, full_text) of a training example; full_text starts with prompt_text, so the tokens after
    the prompt are the answer the loss is taken on.

    chat: the user turn with a generation prompt, and the user + assistant turns through the chat template.
    template / direct: the prompt, and prompt + " " + answer + the tokenizer's EOS token (when it has one).
    """
    if not isinstance(answer, str) or not answer.strip():
        raise DataError(f"the answer to {query!r} must be non-empty text, got {answer!r}")
    prompt_text = format_prompt(query, prompt_format, tokenizer)
    if prompt_format == "chat":
        messages = [{"role": "user", "content": query}, {"role": "assistant", "content": answer}]
        full_text = _chat(tokenizer, messages, add_generation_prompt=False)
        if not full_text.startswith(prompt_text):
            raise DataError("this tokenizer's chat template renders the user turn differently once an assistant "
                            "turn follows, so the answer cannot be separated from the prompt; use "
                            "prompt_format='template' or a tokenizer whose template keeps earlier turns unchanged")
        return prompt_text, full_text
    eos = getattr(tokenizer, "eos_token", None) or ""
    return prompt_text, f"{prompt_text} {answer}{eos}"


def _check_query(query: str) -> None:
    if not isinstance(query, str) or not query.strip():
        raise DataError(f"a query must be non-empty text, got {query!r}; remove empty prompts from the dataset")


def _check_format(prompt_format: str) -> None:
    if prompt_format not in PROMPT_FORMATS:
        raise DataError(f"unknown prompt format {prompt_format!r}; choose one of {', '.join(PROMPT_FORMATS)}")


def _chat(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    """`messages` rendered as text by the tokenizer's chat template."""
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise DataError("prompt format 'chat' needs a tokenizer with a chat template, and this "
                        f"{'model has no tokenizer' if tokenizer is None else 'tokenizer has none'}; "
                        "use prompt_format='template' or 'direct', or a chat (instruct) model")
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
