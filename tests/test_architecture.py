"""The package's shape: imports point one way, modules stay readable, the CLI starts without TVM."""

import ast
import subprocess
import sys
from pathlib import Path

import tvmopt

PACKAGE = Path(tvmopt.__file__).parent
MAX_LINES = 600

# The compiler's stages in the order data flows through them (tvmopt/__init__.py): a stage imports
# the stages before it, never one after it, so each can be read and changed knowing only what
# comes before. `prepare` runs the first two for tuning and the build; `bench` times what the
# runtime loads. Modules outside the order (errors, targets, kernels...) serve several stages.
STAGES = ("frontend", "graph", "prepare", "tasks", "tuning", "database", "build", "runtime", "bench")
# Imports of a later stage that are right, each with its reason.
LATER_STAGES_ALLOWED = {
    # Tuning writes its measurements into the database through the database's API: the database
    # is where tuning hands over to the build, so its writer knows it; it knows nothing of tuning.
    ("tuning", "database"),
}
# Imports the order alone allows but that would be wrong.
FORBIDDEN = {
    # The frontend hands the graph stage a Relax module; kernels are chosen after it.
    ("frontend", "kernels"),
    # The exception above goes one way: the database stores what was measured, not how.
    ("database", "tuning"),
}


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


def _stage(module: str) -> str | None:
    """tvmopt.frontend.loading -> "frontend", tvmopt.cli.app -> "cli"; the package itself: None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _direction_violations(graph: dict[str, set[str]]) -> list[str]:
    """The imports in `graph` that point against the stages' order, and any of the CLI by the
    library (the CLI is the top: only it and `python -m tvmopt` may import it)."""
    order = {stage: i for i, stage in enumerate(STAGES)}
    found = []
    for module, deps in graph.items():
        source = _stage(module)
        for dep in deps:
            target = _stage(dep)
            if source is None or target is None or source == target:
                continue
            later = source in order and target in order and order[target] > order[source]
            if (later and (source, target) not in LATER_STAGES_ALLOWED) \
                    or (source, target) in FORBIDDEN \
                    or (target == "cli" and source != "__main__"):
                found.append(f"{module} imports {dep}")
    return sorted(found)


def test_stages_import_only_the_stages_before_them():
    graph = _graph()
    assert {"tvmopt.frontend.loading", "tvmopt.graph.pipeline"} <= set(graph)  # the real layout
    assert _direction_violations({  # the check catches each kind of wrong import
        "tvmopt.frontend.importer": {"tvmopt.graph.relax_helpers", "tvmopt.kernels.library"},
        "tvmopt.graph.pipeline": {"tvmopt.tuning.tuner", "tvmopt.frontend"},
        "tvmopt.database.store": {"tvmopt.tuning"},
        "tvmopt.runtime": {"tvmopt.cli.app"},
    }) == ["tvmopt.database.store imports tvmopt.tuning",
           "tvmopt.frontend.importer imports tvmopt.graph.relax_helpers",
           "tvmopt.frontend.importer imports tvmopt.kernels.library",
           "tvmopt.graph.pipeline imports tvmopt.tuning.tuner",
           "tvmopt.runtime imports tvmopt.cli.app"]
    assert _direction_violations(graph) == []


def test_relax_helpers_load_without_the_kernel_library():
    """The kernel library imports tvmopt.graph.relax_helpers and the pipeline imports the kernel
    library: loading the helpers must not load the library, or the two would import each other."""
    code = ("import sys, tvmopt.graph.relax_helpers; "
            "assert 'tvmopt.kernels.library' not in sys.modules, 'kernel library imported'; "
            "assert 'tvm' not in sys.modules, 'tvm imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


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
