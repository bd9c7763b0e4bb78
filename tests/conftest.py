import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))

import models  # noqa: E402

from tvmopt.cli import cli  # noqa: E402


def _has_nvidia_gpu() -> bool:
    if shutil.which("nvidia-smi") is None:
        return False
    return subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0


def pytest_collection_modifyitems(config, items):
    if _has_nvidia_gpu():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def empty_database(path):
    from tvmopt.database import open_database

    open_database(path).close()  # a writer's open creates it
    return path


@pytest.fixture(autouse=True)
def isolated_db(tmp_path, monkeypatch):
    """Every test gets its own empty database, as a user pointing TVMOPT_DB at a file would."""
    db = empty_database(tmp_path / "tvmopt.db")
    monkeypatch.setenv("TVMOPT_DB", str(db))
    monkeypatch.delenv("TVMOPT_TARGETS_PATH", raising=False)
    return db


@pytest.fixture
def invoke():
    """Run the CLI in-process; returns click's Result (exit_code, output)."""
    runner = CliRunner()

    def _invoke(*args):
        return runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)

    return _invoke


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def conv_model(model_dir):
    return models.conv_bn_relu(model_dir / "conv_bn_relu.onnx")


@pytest.fixture(scope="session")
def two_output_model(model_dir):
    return models.two_outputs(model_dir / "two_outputs.onnx")


@pytest.fixture(scope="session")
def dynamic_model(model_dir):
    return models.conv_bn_relu(model_dir / "dynamic.onnx", batch="batch")


@pytest.fixture(scope="session")
def built_two_output(tmp_path_factory, two_output_model):
    """One library built once and shared by the runtime tests."""
    from tvmopt import build, targets

    out = tmp_path_factory.mktemp("built") / "two_outputs.so"
    db = empty_database(tmp_path_factory.mktemp("db") / "tvmopt.db")
    build.build(two_output_model, targets.resolve("host"), out, db_path=db)
    return out


def assert_one_line_error(result, *fragments):
    """A user error: non-zero exit, one 'Error:' line naming the problem, no traceback."""
    assert result.exit_code != 0, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    assert "Traceback" not in result.output and "internal error" not in result.output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def rpc_tracker(tmp_path_factory, request):
    """A real TVM RPC tracker and two servers on 127.0.0.1, under key tvmopt-test; their output
    goes to rpc-*.log files, which a failing test's report shows. For GPU tests the servers spawn
    their session processes instead of forking them, as GPU servers must be run."""
    port = free_port()
    spawn = ["--no-fork"] if request.node.get_closest_marker("gpu") else []
    logs = tmp_path_factory.mktemp("rpc")
    procs = [subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1",
                               "--port", str(port), "--port-end", str(port + 1)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)]
    try:
        from tvm import rpc

        deadline = time.monotonic() + 60
        while True:
            try:
                tracker = rpc.connect_tracker("127.0.0.1", port)
                break
            except Exception:
                assert time.monotonic() < deadline, "tracker did not start"
                time.sleep(0.5)
        for i in range(2):
            server_port = free_port()
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "tvm.exec.rpc_server", "--tracker", f"127.0.0.1:{port}",
                 "--key", "tvmopt-test", "--host", "127.0.0.1", "--port", str(server_port),
                 "--port-end", str(server_port + 1), *spawn],
                stdout=(logs / f"rpc-server-{i}.log").open("w"), stderr=subprocess.STDOUT,
                start_new_session=True))
        while tracker.summary()["queue_info"].get("tvmopt-test", {}).get("free", 0) < 2:
            assert time.monotonic() < deadline, (tracker.summary(), _tails(logs))
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        for p in procs:  # with the sessions and workers a server started (their own group)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        print(_tails(logs))  # captured: pytest shows the servers' side when the test failed


def _tails(logs: Path, lines: int = 30) -> str:
    return "\n".join(f"--- {log.name}\n" + "\n".join(log.read_text().splitlines()[-lines:])
                     for log in sorted(logs.glob("*.log")))
