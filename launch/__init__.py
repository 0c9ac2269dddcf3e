"""The `jaxheads` command's launches, one module per subcommand (installed as `jaxheads.launch`): each parses
flags into its config and calls the library's `jaxheads.jobs.NAME.run(config)`."""
