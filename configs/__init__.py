"""Default settings of every `jaxheads` command, one ml_collections config file per command.

Each module has `get_config()` (the defaults; `--config=FILE` replaces it with a file of the same form) and `HELP`
(one line per field, shown by `jaxheads CMD --help`). Installed as `jaxheads.configs`.
"""
