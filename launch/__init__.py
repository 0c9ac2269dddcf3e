"""The `jaxheads` command's launches, one module per subcommand (installed as `jaxheads.launch`): each parses
flags into its config and calls the library's `jaxheads.jobs.NAME.run(config)`."""

import os

# transformers announces at import that PyTorch is missing; jaxheads never needs it, so a command does not say so.
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
