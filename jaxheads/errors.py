"""Errors that name what was wrong with a user's input."""


class JaxheadsError(ValueError):
    """Base class: a bad input that the user can fix (message says what and how)."""


class LoadError(JaxheadsError):
    """A model, checkpoint, tokenizer or quantization that cannot be loaded."""


class DataError(JaxheadsError):
    """A dataset or prompt that cannot be used (missing file/column, empty, too long)."""
