"""The package's layers (docs/architecture.md): every module imports only from its own layer
or the layers below it, no import circle, and no command imports another command or the CLI.
And no function of the package is longer than MAX_FUNCTION_LINES.

Read from the source (AST), so imports inside functions count as much as those at the top
of a module: a lazy import defers the cost of a module, not the dependency on it.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "oneepoch"

# Bottom to top. A name stands for that module; "NAME.*" for a package and all it contains.
LAYERS: list[tuple[str, list[str]]] = [
    (
        "base",
        [
            "oneepoch",
            "oneepoch.allocator",
            "oneepoch.atomic",
            "oneepoch.cache",
            "oneepoch.errors",
            "oneepoch.flops",
            "oneepoch.locking",
            "oneepoch.progress",
            "oneepoch.safefs",
            "oneepoch.slowdown",
            "oneepoch.statecodec",
            "oneepoch.units",
        ],
    ),
    ("machine facts", ["oneepoch.measure", "oneepoch.measure.machine"]),
    (
        "core",
        [
            "oneepoch.config",
            "oneepoch.cliflags",
            "oneepoch.schedule",
            "oneepoch.data.*",
            "oneepoch.sampler",
            "oneepoch.prefetch",
            "oneepoch.head_loss",
            "oneepoch.model",
            "oneepoch.distributed",
            "oneepoch.checkpoint",
            "oneepoch.step",
            "oneepoch.rundir",
        ],
    ),
    ("analysis", ["oneepoch.analysis.*", "oneepoch.live_forecast", "oneepoch.tensorboard"]),
    (
        "measuring",
        ["oneepoch.measure.harness", "oneepoch.measure.dtype", "oneepoch.measure.throughput"],
    ),
    ("training", ["oneepoch.train", "oneepoch.export", "oneepoch.sample"]),
    ("planning", ["oneepoch.plan.*"]),
    (
        "drivers",
        ["oneepoch.runqueue", "oneepoch.runworker", "oneepoch.launch", "oneepoch.reproduce.*"],
    ),
    ("commands", ["oneepoch.commands.*"]),
    ("cli", ["oneepoch.cli", "oneepoch.__main__"]),
]
# Layers whose modules do not import one another: each command stands on the library alone.
INDEPENDENT = {"commands"}
# The most lines a function of the package may span, from ``def`` to its last line: a longer
# one does several things that want names of their own.
MAX_FUNCTION_LINES = 80


def module_files() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def layer_of(module: str) -> int | None:
    """The layer that names ``module`` itself, else the one whose package holds it."""
    exact = [i for i, (_, names) in enumerate(LAYERS) if module in names]
    if exact:
        return exact[0]
    owners = [
        (len(name), i)
        for i, (_, names) in enumerate(LAYERS)
        for name in names
        if name.endswith(".*") and (module + ".").startswith(name[:-1])
    ]
    return max(owners)[1] if owners else None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``module`` imports anywhere in it, with the packages that
    importing them runs."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = (
                    module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                )
                package = package[: len(package) - node.level + 1]
                base = ".".join(package + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    targets = set()
    for name in found:
        parts = name.split(".")
        targets.update(".".join(parts[:n]) for n in range(1, len(parts) + 1))
    return {t for t in targets if t in modules and t != module}


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {m: imports_of(m, p, modules) for m, p in modules.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles: strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_module_has_a_layer():
    unplaced = sorted(m for m in module_files() if layer_of(m) is None)
    assert not unplaced, f"place these in LAYERS here and in docs/architecture.md: {unplaced}"


def test_no_module_imports_from_a_layer_above_its_own():
    upward = []
    for module, targets in sorted(import_graph().items()):
        mine = layer_of(module)
        for target in sorted(targets):
            theirs = layer_of(target)
            if mine is None or theirs is None:
                continue  # reported by test_every_module_has_a_layer
            if theirs > mine:
                upward.append(
                    f"{module} ({LAYERS[mine][0]}) imports {target} ({LAYERS[theirs][0]})"
                )
            elif theirs == mine and LAYERS[mine][0] in INDEPENDENT:
                if module.startswith(target + "."):
                    continue  # its own package, which importing it runs
                upward.append(f"{module} imports {target}, another of the {LAYERS[mine][0]}")
    assert not upward, "\n".join(upward)


def test_no_import_circle():
    found = circles(import_graph())
    assert not found, "import circles: " + "; ".join(" <-> ".join(g) for g in found)


def test_the_checks_see_lazy_imports_upward_and_circles(tmp_path):
    """The checks themselves: an import inside a function is seen, and a circle is found."""
    source = "def f():\n    from oneepoch.cli import main\n    from . import step\n"
    path = tmp_path / "model.py"
    path.write_text(source)
    modules = {"oneepoch.cli": path, "oneepoch.step": path, "oneepoch": path}
    assert imports_of("oneepoch.model", path, modules) == {
        "oneepoch",
        "oneepoch.cli",
        "oneepoch.step",
    }
    assert layer_of("oneepoch.cli") > layer_of("oneepoch.model")
    assert layer_of("oneepoch.plan.planner") == layer_of("oneepoch.plan")
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def long_functions(path: Path, limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, int, int]]:
    """(name, first line, lines) of every function or method in ``path`` longer than ``limit``,
    in the order they start."""
    found = [
        (node.name, node.lineno, node.end_lineno - node.lineno + 1)
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    ]
    return sorted((f for f in found if f[2] > limit), key=lambda f: f[1])


def test_no_function_over_max_lines():
    found = [
        f"{module}.{name} (line {first}): {lines} lines"
        for module, path in sorted(module_files().items())
        for name, first, lines in long_functions(path)
    ]
    assert not found, f"over {MAX_FUNCTION_LINES} lines: " + "; ".join(found)


def test_the_length_check_sees_methods_and_nested_functions(tmp_path):
    body = "".join(f"        x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))
    path = tmp_path / "long.py"
    path.write_text(
        f"class A:\n    def method(self):\n{body}\n"
        f"def outer():\n    def inner():\n{body}    return inner\n"
        f"def at_the_limit():\n{body[: body.rindex('        x')]}"  # def and one line fewer
    )
    assert long_functions(path) == [
        ("method", 2, MAX_FUNCTION_LINES + 1),
        ("outer", MAX_FUNCTION_LINES + 4, MAX_FUNCTION_LINES + 3),
        ("inner", MAX_FUNCTION_LINES + 5, MAX_FUNCTION_LINES + 1),
    ]
