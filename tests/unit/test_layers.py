"""Each module imports only its own layer or the ones below (docs/architecture.md, "Layers"), and no two modules
import each other, directly or around a loop. Every import counts: module level, inside functions, TYPE_CHECKING."""

from __future__ import annotations

import ast
from pathlib import Path

import berthing

SRC = Path(berthing.__file__).parent

# Module prefix -> layer; the longest matching prefix decides. A new module must fit one of these.
LAYERS: dict[str, int] = {
    "berthing.types": 0,  # errors, request types
    "berthing.version": 0,
    "berthing.spec": 0,  # ModelSpec
    "berthing.names": 0,  # model name and version rules
    "berthing.inputs": 0,  # input validation
    "berthing.prefetch": 0,  # standard library only: it runs before the heavy imports
    "berthing.client": 0,  # the Python SDK: httpx and numpy, nothing of the server
    "berthing.tasks": 1,
    "berthing.runtime": 2,
    "berthing.engine": 3,
    "berthing.packaging": 4,
    "berthing.registry": 5,
    "berthing.handler": 5,
    "berthing.loading": 6,
    "berthing.load_check": 6,  # a package's probe at load: below loading.py, which calls it
    "berthing.config": 7,
    "berthing.train": 7,  # fine-tuning: data, loop, figures, report; packs with packaging, evaluates through loading
    "berthing.server": 8,
    "berthing.serverless": 8,
    "berthing.batch": 8,
    "berthing.ray": 8,  # berthing on Ray Serve and Ray Data: the server's app and batch's records, on a cluster
    "berthing.cli": 8,
    "berthing.__main__": 8,
    "berthing": 8,  # the package itself: berthing.load
}


def _module_name(path: Path) -> str:
    parts = ["berthing", *path.relative_to(SRC).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _layer(module: str) -> int:
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in LAYERS:
            return LAYERS[prefix]
    raise AssertionError(f"{module} is in no layer: add its prefix to LAYERS in {__file__}")


def _imports(module: str) -> list[tuple[str, int]]:
    """(berthing module imported, line) for every import statement in the module, wherever it sits."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's own package up
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:  # `from berthing.packaging import s3` imports the module berthing.packaging.s3
                sub = f"{base}.{alias.name}"
                found.append((sub if sub in MODULES else base, node.lineno))
    return [(name, line) for name, line in found if name == "berthing" or name.startswith("berthing.")]


GRAPH = {module: _imports(module) for module in MODULES}


def test_every_module_has_a_layer() -> None:
    for module in MODULES:
        _layer(module)


def test_imports_go_to_the_same_layer_or_below() -> None:
    upward = [
        f"{MODULES[module].relative_to(SRC.parent)}:{line} imports {target} (layer {_layer(target)}) "
        f"from layer {_layer(module)}"
        for module, targets in GRAPH.items()
        for target, line in targets
        if _layer(target) > _layer(module)
    ]
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_no_import_cycles() -> None:
    edges = {module: sorted({t for t, _ in targets if t in MODULES and t != module}) for module, targets in GRAPH.items()}
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            loop = [*path[path.index(module) :], module]
            raise AssertionError("import cycle: " + " -> ".join(loop))
        if module in done:
            return
        for target in edges[module]:
            visit(target, [*path, module])
        done.add(module)

    for module in edges:
        visit(module, [])


def test_the_check_sees_in_function_imports() -> None:
    """loading.py imports packaging inside its functions; the check must see them, or it would pass vacuously."""
    targets = {t for t, _ in GRAPH["berthing.loading"]}
    assert {"berthing.packaging.export", "berthing.handler", "berthing.engine.model"} <= targets
