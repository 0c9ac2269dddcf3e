"""The `jaxheads` command (installed as `jaxheads.launch`): `cli.COMMANDS` maps each command to its config and its
job, `common` parses flags into the config and runs the job; `python -m jaxheads.launch COMMAND` is the same."""

import os

# transformers announces at import that PyTorch is missing; jaxheads never needs it, so a command does not say so.
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
