"""JSON lines from outside (TVM's database files, tactic records, a merged file's rows), checked
before any parser sees them.

TVM's parsers recurse once per nesting level and crash the process (SIGSEGV, no message) on a line
nested some thousands deep; Python's raise RecursionError. TVM's tokenizer logs a C++ line and then
fails on a number out of range ("1e999"). So every line is measured first with a scan that does
not recurse, then parsed by Python with its numbers checked, and refused with its file and line.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import struct
import sys
from pathlib import Path

from ..errors import TvmoptError

# Files tvmopt and TVM write nest 6 levels deep (a record's trace), TVM's IR graph 4.
MAX_DEPTH = 100
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_BRACKETS = re.compile(r"[^\[\]{}]+")
_INT64 = (-(1 << 63), (1 << 63) - 1)


class BadLine(ValueError):
    """Why a line cannot be read, in words (the caller adds the file and line)."""


def json_depth(text: str) -> int:
    """How deep arrays and objects nest in JSON `text` (strings skipped), without recursing."""
    depth = deepest = 0
    for c in _BRACKETS.sub("", _STRING.sub("", text)):
        depth += 1 if c in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def _float(text: str) -> float:
    value = float(text)
    underflow = value == 0 and any(d in "123456789" for d in text.lower().partition("e")[0])
    if not math.isfinite(value) or underflow or 0 < abs(value) < sys.float_info.min:
        raise BadLine(f"the number {text[:40]} is out of range for a 64-bit float")
    return value


def _int(text: str) -> int:
    value = int(text)
    if not _INT64[0] <= value <= _INT64[1]:
        raise BadLine(f"the number {text[:40]} is out of range for a 64-bit integer")
    return value


def _constant(text: str):
    raise BadLine(f"{text} is not a JSON number")


def loads(text: str):
    """Parse one JSON text, refusing deep nesting and numbers TVM cannot hold (BadLine)."""
    depth = json_depth(text)
    if depth > MAX_DEPTH:
        raise BadLine(f"JSON nested {depth} levels deep (at most {MAX_DEPTH} are read)")
    try:
        return json.loads(text, parse_float=_float, parse_int=_int, parse_constant=_constant)
    except BadLine:
        raise
    except (ValueError, RecursionError) as e:
        raise BadLine(f"not JSON ({str(e)[:120]})") from None


def read_lines(path: Path, check=None, remedy: str = "fix or delete that line") -> list:
    """Every non-blank line of a JSON-lines file, parsed; `check(obj)` may raise BadLine too."""
    out = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                text = raw.decode("utf-8")
                if not text.strip():
                    continue
                obj = loads(text)
                if check is not None:
                    check(obj)
            except (BadLine, UnicodeDecodeError) as e:
                raise TvmoptError(f"{path}:{number}: {e}; {remedy}, or export the database "
                                  "again") from None
            out.append(obj)
    return out


def check_tvm_files(workload_path: Path, record_path: Path) -> None:
    """The lines of TVM's database_workload.json and database_tuning_record.json are safe for
    TVM's parser: bounded nesting (the workload's IR, base64 inside its line, too), numbers in
    range, and records that name a workload of the file and give latencies as numbers."""
    n_workloads = len(read_lines(workload_path, _check_workload, "fix that line (records name "
                                 "workloads by line number)"))
    read_lines(record_path, lambda obj: _check_record(obj, n_workloads))


def _check_workload(obj) -> None:
    """[structural hash, base64 of (8-byte length, the IR as TVM's save_json text)]."""
    if not (isinstance(obj, list) and len(obj) == 2 and all(isinstance(x, str) for x in obj)):
        raise BadLine("not a TVM workload (expected [hash, base64 IR])")
    try:
        raw = base64.b64decode(obj[1], validate=True)
    except (binascii.Error, ValueError):
        raise BadLine("the workload's IR is not base64") from None
    if len(raw) < 8 or struct.unpack("<Q", raw[:8])[0] != len(raw) - 8:
        raise BadLine("the workload's IR is not TVM's serialized text")
    depth = json_depth(raw[8:].decode("utf-8", errors="replace"))
    if depth > MAX_DEPTH:
        raise BadLine(f"the workload's IR nests {depth} levels deep (at most {MAX_DEPTH} are read)")


def _check_record(obj, n_workloads: int) -> None:
    """[workload index, [trace, run seconds or null, target, argument info]]."""
    if not (isinstance(obj, list) and len(obj) == 2 and isinstance(obj[1], list)
            and len(obj[1]) == 4 and type(obj[0]) is int):
        raise BadLine("not a TVM tuning record (expected [workload index, [trace, run_secs, "
                      "target, args_info]])")
    if not 0 <= obj[0] < n_workloads:
        raise BadLine(f"workload {obj[0]} is not in the workload file ({n_workloads} lines)")
    secs = obj[1][1]
    if secs is not None and not (isinstance(secs, list) and all(
            type(s) in (int, float) for s in secs)):
        raise BadLine("its run seconds are not a list of numbers")
    _check_embedded(obj[1][0])


def _check_embedded(obj) -> None:
    """Traces carry TVM objects (IndexMaps) as save_json text, which TVM parses in turn."""
    if isinstance(obj, str) and obj[:1] in ("[", "{"):
        if json_depth(obj) > MAX_DEPTH:
            raise BadLine(f"an object in its trace nests more than {MAX_DEPTH} levels deep")
    elif isinstance(obj, list | dict):
        for x in (obj.values() if isinstance(obj, dict) else obj):
            _check_embedded(x)


def text_ok(text) -> bool:
    """Whether JSON text from a row of another file (a merge) is safe to store and parse later:
    text (or None), nested within bounds. Its numbers are left as they are: the parsers that read
    rows (Python's json, TVM's load_json) are not TVM's database tokenizer."""
    return text is None or (isinstance(text, str) and json_depth(text) <= MAX_DEPTH)
