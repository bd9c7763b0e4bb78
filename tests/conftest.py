import shutil
import subprocess
import sys
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
