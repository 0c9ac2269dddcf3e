"""The structure of the package, read from its source: imports run one way (launch -> configs -> jobs -> library,
the package face on top of the library), with no cycle, function-local imports only of heavy optional
dependencies, and no module over 450 lines."""

import ast
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]
# The folders of the package and the module names they are installed as (pyproject.toml's package-dir).
ROOTS = {"jaxheads": REPO / "jaxheads", "jaxheads.launch": REPO / "launch", "jaxheads.configs": REPO / "configs"}
# Third-party packages that a function may import where it needs them: each costs a noticeable share of a
# command's start-up and only some paths use it.
LAZY_THIRD_PARTY = {
    "matplotlib": "plots only (0.6 s to import)",
    "transformers": "tokenizers and configs of checkpoints that need them (1.2 s)",
    "datasets": "the optional hub extra",
    "torch": "never needed; only named in messages",
}
MAX_LINES = 450


def modules() -> dict[str, pathlib.Path]:
    found = {}
    for package, folder in ROOTS.items():
        for path in sorted(folder.rglob("*.py")):
            relative = path.relative_to(folder).with_suffix("")
            parts = [part for part in relative.parts if part != "__init__"]
            found[".".join([package, *parts])] = path
    return found


def imported(name: str, node: ast.AST, known: set[str]) -> list[str]:
    """The jaxheads modules an import statement of module `name` reads (a `from package import name` of a
    submodule counts as that submodule)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name.split(".")[0] == "jaxheads"]
    assert node.level == 0, f"{name}:{node.lineno}: a relative import; jaxheads imports by absolute names"
    module = node.module or ""
    if module.split(".")[0] != "jaxheads":
        return []
    return [f"{module}.{alias.name}" if f"{module}.{alias.name}" in known else module for alias in node.names]


def import_graph():
    """{module: [(imported module, line, function-local?)]} over every module of the package."""
    known = modules()
    graph = {}
    for name, path in known.items():
        tree = ast.parse(path.read_text())
        edges = []
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for inner in ast.walk(node):
                    if isinstance(inner, (ast.Import, ast.ImportFrom)):
                        inner.local = True
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in imported(name, node, set(known)):
                    edges.append((target, node.lineno, getattr(node, "local", False)))
        graph[name] = edges
    return graph


def layer(module: str) -> int:
    """launch 4, configs 3, jobs 2, library 1; the package face 5 (it only hands library names on)."""
    if module == "jaxheads":
        return 5
    if module.startswith("jaxheads.launch"):
        return 4
    if module.startswith("jaxheads.configs"):
        return 3
    if module.startswith("jaxheads.jobs"):
        return 2
    return 1


def test_no_import_runs_back_up():
    upward = [(module, target, line) for module, edges in import_graph().items() for target, line, _ in edges
              if layer(target) > layer(module) or (target == "jaxheads" and module != "jaxheads")]
    assert upward == []


def test_the_import_graph_has_no_cycle():
    graph = {module: sorted({target for target, _, _ in edges}) for module, edges in import_graph().items()}
    state, cycles = {}, []

    def visit(module, path):
        state[module] = "open"
        for target in graph.get(module, []):
            if state.get(target) == "open":
                cycles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in graph:
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_the_package_face_only_hands_names_on():
    tree = ast.parse((REPO / "jaxheads" / "__init__.py").read_text())
    allowed = (ast.Import, ast.ImportFrom, ast.Expr, ast.Assign)  # imports, the docstring, __all__
    assert all(isinstance(node, allowed) for node in tree.body)
    assert [target.id for node in tree.body if isinstance(node, ast.Assign) for target in node.targets] == ["__all__"]


def test_function_local_imports_are_only_of_heavy_optional_dependencies():
    local_jaxheads = [(module, target, line) for module, edges in import_graph().items()
                      for target, line, local in edges if local]
    assert local_jaxheads == []
    others = []
    for name, path in modules().items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for inner in ast.walk(node):
                    if isinstance(inner, ast.Import):
                        names = [alias.name for alias in inner.names]
                    elif isinstance(inner, ast.ImportFrom):
                        names = [inner.module or ""]
                    else:
                        continue
                    others += [(name, top, inner.lineno) for top in (n.split(".")[0] for n in names)
                               if top not in LAZY_THIRD_PARTY]
    assert others == []


def test_no_module_is_over_450_lines():
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}
