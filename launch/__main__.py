"""`python -m jaxheads.launch COMMAND ...`, the same as the `jaxheads` command."""

from jaxheads.launch.cli import main

main()
