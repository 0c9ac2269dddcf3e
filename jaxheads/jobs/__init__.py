"""The work behind each `jaxheads` command, one module per command, each with `run(config) -> dict`.

A config is an ml_collections `ConfigDict` (the defaults are in `jaxheads.configs`); `run` checks every setting
before any work starts, writes its result files into `config.out` and returns the main result. The launches in
`jaxheads.launch` only parse flags into a config and call `run`, so tests and notebooks call `run` directly.
"""
