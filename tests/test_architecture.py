"""The package's shape: imports point one way, modules stay readable, the CLI starts without TVM."""

import ast
import subprocess
import sys
from pathlib import Path

import tvmopt

PACKAGE = Path(tvmopt.__file__).parent
MAX_LINES = 600


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    relative = Path(*name.split("."))
    return (PACKAGE.parent / relative).with_suffix(".py").is_file() or \
        (PACKAGE.parent / relative / "__init__.py").is_file()


def _imports(path: Path) -> set[str]:
    """tvmopt modules that `path` imports anywhere in it (function-level imports included)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "tvmopt"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            elif (node.module or "").split(".")[0] == "tvmopt":
                base = node.module
            else:
                continue
            for alias in node.names:  # `from . import build` names a module, `import x` a name
                found.add(f"{base}.{alias.name}" if _is_module(f"{base}.{alias.name}") else base)
    found.discard(module)
    return found


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in PACKAGE.rglob("*.py")}


def test_no_import_cycle_inside_the_package():
    graph = _graph()
    assert "tvmopt.build" in graph["tvmopt.cli.model"]  # the graph sees function-level imports
    state: dict[str, str] = {}

    def visit(node, path):
        state[node] = "open"
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(dep):] + [dep]))
            if dep not in state:
                visit(dep, path + [dep])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_no_module_is_too_long_to_read():
    lengths = {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines())
               for p in PACKAGE.rglob("*.py")}
    assert {name: n for name, n in lengths.items() if n > MAX_LINES} == {}


def test_the_cli_imports_no_tvm():
    code = "import sys, tvmopt.cli; assert 'tvm' not in sys.modules, 'tvm imported'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_build_reads_and_parses_the_onnx_file_once(tmp_path, conv_model, monkeypatch):
    """One read and one protobuf parse of the user's file per build (the ONNX Runtime round
    trip that folds constants parses its own output, not the user's file)."""
    import onnx

    from tvmopt import build, targets

    seen = []

    def spy(owner, name, record):
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            seen.extend(record(*args))
            return original(*args, **kwargs)
        monkeypatch.setattr(owner, name, wrapper)

    is_model = lambda arg: str(arg) == str(conv_model)  # noqa: E731
    spy(Path, "read_bytes", lambda self: ["read"] if is_model(self) else [])
    spy(onnx, "load_model_from_string", lambda *a: ["parse"])
    spy(onnx, "load", lambda f, *a: ["onnx.load"] if is_model(f) else [])
    spy(onnx.checker, "check_model", lambda m, *a: ["check reads the file"] if is_model(m) else [])
    build.build(conv_model, targets.resolve("host"), tmp_path / "m.so")
    assert seen == ["read", "parse"]
