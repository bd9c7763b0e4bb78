"""Read an ONNX file once: hash it, parse it, load its external weights from beside it, mend known
exporter bugs (`repairs`) and run ONNX's checker, so that every way a file can be unusable becomes
one TvmoptError a user can act on before any compiling starts.

The hash identifies the model in the artifact's manifest and in tuning records: it covers the
external weights too, since they are part of the model.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError, EncodeError

from ..errors import TvmoptError, first_line
from .repairs import repair

log = logging.getLogger(__name__)

_PROTOBUF_LIMIT = 2**31 - 1


def fits_protobuf(model: onnx.ModelProto, limit: int = _PROTOBUF_LIMIT) -> bool:
    """Whether protobuf can serialise the model as one message of at most `limit` bytes. Past
    2 GiB, protobuf's upb backend raises from ByteSize itself, after seconds of counting: the
    weights' bytes alone answer for a large model."""
    if sum(len(t.raw_data) for t in model.graph.initializer) >= limit:
        return False
    try:
        return model.ByteSize() < limit
    except EncodeError:
        return False


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _model_sha256(onnx_sha256: str, data_files: list[Path]) -> str:
    """The .onnx file's hash, extended by its external data files: weights are part of a model."""
    if not data_files:
        return onnx_sha256
    h = hashlib.sha256(onnx_sha256.encode())
    for f in data_files:
        h.update(f"{f.name}:{file_sha256(f)}".encode())
    return h.hexdigest()


def external_data_files(model: onnx.ModelProto, path: Path) -> list[Path]:
    """The files, beside the model, that hold its external tensors (in first-use order)."""
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    locations = [ExternalDataInfo(t).location for t in _get_all_tensors(model) if uses_external_data(t)]
    return [path.parent / loc for loc in dict.fromkeys(locations)]


def _check_data_file(model_path: Path, data: Path) -> None:
    """External weights are read only from a regular file in the model's own directory: a
    location that is absolute, climbs out with .., or is a link is refused (a crafted model
    could otherwise read any file into the artifact)."""
    import stat

    from ..outputs import file_kind

    location = os.path.relpath(data, model_path.parent)
    fix = "save its weights file beside it (onnx.save(..., save_as_external_data=True))"
    if ".." in Path(location).parts:
        raise TvmoptError(f"{model_path}: its weights location {location!r} is outside the model's "
                          f"directory; tvmopt reads weights only from beside the model: {fix}")
    part = model_path.parent / location
    while part != model_path.parent:
        if part.is_symlink():
            raise TvmoptError(f"{model_path}: its weights location {location} goes through a "
                              f"symbolic link ({part.name}); tvmopt reads weights only from real "
                              f"files beside the model: {fix}")
        part = part.parent
    try:
        mode = data.stat().st_mode
    except FileNotFoundError:
        raise TvmoptError(f"{model_path}: its weights are in {location}, which is not beside it in "
                          f"{model_path.parent}; copy that file next to the model") from None
    if not stat.S_ISREG(mode):
        raise TvmoptError(f"{model_path}: its weights location {location} is not a regular file "
                          f"(a {file_kind(mode)}); {fix}")


@dataclass
class LoadedModel:
    """An ONNX file read once: the parsed model (external data loaded), and what identifies it."""

    path: Path
    proto: onnx.ModelProto
    data_files: list[Path]  # its external data, read from beside it (loading drops their names)
    sha256: str  # of the .onnx bytes, extended by the data files
    repairs: tuple[str, ...] = ()  # exporter bugs mended in memory so that the model validates


def load_model(path: str | Path) -> onnx.ModelProto:
    """Read and validate an ONNX file, with its external data from beside it; every way it can be
    unusable becomes a TvmoptError."""
    return load(path).proto


def load(path: str | Path) -> LoadedModel:
    """Read an ONNX file once: its bytes are hashed and parsed, its external data loaded, and the
    whole model checked; every way it can be unusable becomes a TvmoptError."""
    from onnx.external_data_helper import load_external_data_for_model

    path = Path(path)
    if not path.exists():
        raise TvmoptError(f"{path}: no such file; pass the path of an .onnx model")
    if not path.is_file():
        raise TvmoptError(f"{path}: is not a file; pass the path of an .onnx model")
    raw = path.read_bytes()
    try:
        model = onnx.load_model_from_string(raw)
    except (DecodeError, UnicodeDecodeError, ValueError, RuntimeError) as e:
        raise TvmoptError(
            f"{path}: not a readable ONNX model ({first_line(e)}); the file may be truncated "
            "or not ONNX at all: re-export it"
        ) from None
    onnx_sha256 = hashlib.sha256(raw).hexdigest()
    del raw
    # protobuf happily parses many non-ONNX byte strings into an empty message.
    if not model.graph.node or model.ir_version == 0:
        raise TvmoptError(
            f"{path}: not an ONNX model (no graph found); re-export it with torch.onnx.export "
            "or a similar exporter"
        )
    if not model.graph.output:
        raise TvmoptError(f"{path}: the graph declares no outputs, so it computes nothing; "
                          "re-export it naming its outputs (torch.onnx.export(output_names=...))")
    data_files = external_data_files(model, path)
    for f in data_files:
        _check_data_file(path, f)
    if data_files:
        try:
            load_external_data_for_model(model, str(path.parent))
        except (OSError, ValueError, onnx.checker.ValidationError) as e:
            raise TvmoptError(f"{path}: cannot read its external data ({first_line(e)}); "
                              "re-export the model") from None
        log.info("loaded external data from %s", ", ".join(f.name for f in data_files))
    repairs = tuple(repair(model))
    for line in repairs:
        log.warning("%s: repaired an exporter bug: %s", path.name, line)
    try:
        # In memory where protobuf can hold the model; past 2 GiB the checker reads the files.
        onnx.checker.check_model(model if fits_protobuf(model) else str(path))
    except onnx.checker.ValidationError as e:
        raise TvmoptError(
            f"{path}: the ONNX checker rejects this model ({first_line(e)}); re-export it"
        ) from None
    return LoadedModel(path, model, data_files, _model_sha256(onnx_sha256, data_files), repairs)
