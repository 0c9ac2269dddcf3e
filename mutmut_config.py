"""mutmut 2 hooks (docs/mutation.md): mutate only the functions listed per module in pyproject.toml's
[tool.jaxheads.mutation], and test each mutant with that module's fast tests.

pytest's exit status is folded to 0 (passed: the mutant survived) or 1 (killed): mutmut counts only status 1 as a
kill, so a mutant that breaks collection (status 2) or leaves no test to run (5) would otherwise survive."""

import ast
import functools
import shlex
import tomllib


@functools.cache
def modules() -> dict:
    with open("pyproject.toml", "rb") as file:
        return tomllib.load(file)["tool"]["jaxheads"]["mutation"]


@functools.cache
def function_lines(filename: str, names: tuple[str, ...]) -> tuple[tuple[int, int], ...]:
    """The 1-based line ranges of the (top-level or method) functions called `names` in `filename`, without their
    docstrings and `raise` statements (error messages are pinned by the tests of each error, not in scope here)."""
    with open(filename) as file:
        tree = ast.parse(file.read())
    ranges = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in names:
            body = node.body[1:] if ast.get_docstring(node) is not None else node.body
            if body:
                ranges.append((body[0].lineno, node.end_lineno))
    return tuple(ranges)


@functools.cache
def raise_lines(filename: str) -> frozenset[int]:
    with open(filename) as file:
        tree = ast.parse(file.read())
    return frozenset(line for node in ast.walk(tree) if isinstance(node, ast.Raise)
                     for line in range(node.lineno, node.end_lineno + 1))


def in_scope(filename: str, line: int) -> bool:
    """Whether a mutant on 1-based `line` of `filename` is in the configured scope."""
    entry = modules().get(filename)
    if entry is None or line in raise_lines(filename):
        return False
    return any(start <= line <= end for start, end in function_lines(filename, tuple(entry["functions"])))


def pre_mutation(context):
    if not in_scope(context.filename, context.current_line_index + 1):
        context.skip = True
        return
    entry = modules()[context.filename]
    command = f"python -m pytest -x -q -p no:cacheprovider {entry['tests']} || exit 1"
    context.config.test_command = f"sh -c {shlex.quote(command)}"
