"""The one result format: every suite writes a JSON document that says what ran, where and when.

A figure is only worth keeping if it can be reproduced and compared, so each document carries
`device` (the CPU's model and ISA flags, or the GPU's name), `versions` (tvmopt's git commit and
the versions of TVM, PyTorch, ONNX Runtime and Python), `date` and the exact `command`, next to
the suite's own `results` (machine-readable), `sections` (what a reader sees: ordered blocks of
a heading, prose and a table), optional `notes` (prose) and `files` (raw tool output kept beside
the JSON: profiles, logs, plots). `suite` names the suite that wrote it, or is "manual" for a
lab-notebook page of commands run by hand. The Markdown beside each file is rendered from it
(`benchmarks.render`), never written by hand. Converted older results say "unknown" where the
original did not record a field, and name their origin in `provenance`.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import shlex
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
FORMAT = "tvmopt-benchmarks/1"
UNKNOWN = "unknown"
REQUIRED = ("format", "suite", "title", "date", "command", "device", "versions", "results",
            "sections")
VERSION_KEYS = ("tvmopt", "tvm", "torch", "onnxruntime", "python")
DEVICE_KINDS = ("cpu", "gpu", UNKNOWN)
# The CPU features tvmopt's x86 and ARM kernels key on (vector width, FMA, dot products, fp16).
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl",
             "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8",
             "asimd", "asimdhp", "asimddp", "i8mm", "bf16", "sve", "sve2")


def parser(suite: str, doc: str) -> argparse.ArgumentParser:
    """A suite's argument parser: its docstring's first paragraph as the description, the rest
    (how to run it) as the epilog."""
    return argparse.ArgumentParser(prog=f"python -m benchmarks {suite}",
                                   description=doc.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   epilog=doc.split("\n\n", 1)[1] if "\n\n" in doc else None)


def command(suite: str, argv: list[str]) -> str:
    """The command line that reruns this suite with these arguments, from the repository root."""
    return shlex.join(["python", "-m", "benchmarks", suite, *map(str, argv)])


def git_commit() -> str:
    """tvmopt's commit, with `-dirty` when tracked files differ from it: a figure from
    uncommitted code cannot be traced to a commit, and the suffix says so."""
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True,
                               check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return UNKNOWN  # not a git checkout (an installed copy) or no git
    return head + ("-dirty" if dirty else "")


def _distribution(*names: str) -> str:
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return "not installed"


def versions() -> dict:
    """Read from the installed distributions, so recording them imports none of them."""
    return {"tvmopt": git_commit(), "tvmopt_version": _distribution("tvmopt"),
            "tvm": _distribution("apache-tvm"), "torch": _distribution("torch"),
            "onnxruntime": _distribution("onnxruntime-gpu", "onnxruntime"),
            "onnx": _distribution("onnx"), "numpy": _distribution("numpy"),
            "python": platform.python_version()}


def isa_flags() -> list[str]:
    """The ISA_FLAGS this CPU reports in /proc/cpuinfo (x86 `flags`, ARM `Features`)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return []
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            have = set(value.split())
            return [f for f in ISA_FLAGS if f in have]
    return []


def cpu() -> dict:
    from tvmopt import targets

    return {"kind": "cpu", "name": targets.host_cpu_name(), "isa": isa_flags(),
            "llvm_mcpu": targets.detect_host_target()["mcpu"], "cores": os.cpu_count()}


def gpu() -> dict:
    """The first CUDA GPU as TVM sees it (the device tvmopt's CUDA builds run on), with the host
    CPU, which launches its kernels."""
    import tvm

    device = tvm.cuda(0)
    name = str(device.device_name) if device.exist else "no CUDA GPU found"
    return {"kind": "gpu", "name": name, "host_cpu": cpu()}


def new(suite: str, argv: list[str], *, title: str, device: str) -> dict:
    """A result document with its provenance filled in; `device` is "cpu" or "gpu"."""
    return {"format": FORMAT, "suite": suite, "title": title,
            "date": datetime.date.today().isoformat(), "command": command(suite, argv),
            "device": gpu() if device == "gpu" else cpu(), "versions": versions(),
            "results": {}, "sections": []}


def table(columns: list[str], rows: list[list]) -> dict:
    return {"columns": list(columns), "rows": [list(r) for r in rows]}


def problems(doc) -> list[str]:
    """What makes `doc` not a result document (empty when it is one)."""
    if not isinstance(doc, dict):
        return ["not a JSON object"]
    found = [f"no {key!r}" for key in REQUIRED if key not in doc]
    if doc.get("format") not in (None, FORMAT):
        found.append(f"format {doc['format']!r}, expected {FORMAT!r}")
    for key in ("suite", "title", "date", "command"):
        if key in doc and not (isinstance(doc[key], str) and doc[key]):
            found.append(f"{key!r} is not a non-empty string")
    device = doc.get("device")
    if "device" in doc and not (isinstance(device, dict) and device.get("kind") in DEVICE_KINDS
                                and isinstance(device.get("name"), str)):
        found.append(f"'device' needs a kind ({', '.join(DEVICE_KINDS)}) and a name")
    if "versions" in doc:
        got = doc["versions"] if isinstance(doc["versions"], dict) else {}
        found += [f"no version of {k!r}" for k in VERSION_KEYS if not isinstance(got.get(k), str)]
    if not isinstance(doc.get("files", []), list):
        found.append("'files' is not a list of file names")
    for n, section in enumerate(doc.get("sections") or []):
        rows = (section.get("table") or {}).get("rows", [])
        width = len((section.get("table") or {}).get("columns", []))
        if any(len(r) != width for r in rows):
            found.append(f"section {n}: a table row's width differs from its columns'")
    return found


def write(doc: dict, path: Path) -> Path:
    """The JSON at `path` and its Markdown beside it (same name, .md)."""
    from . import render

    wrong = problems(doc)
    if wrong:
        raise ValueError(f"not a result document: {'; '.join(wrong)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    markdown = render.write_markdown(path)
    print(f"wrote {path} and {markdown.name}")
    return path


def default_path(suite: str, *parts: str) -> Path:
    """benchmarks/results/SUITE_PARTS_DATE.json: results sort by suite, then subject, then day."""
    name = "_".join([suite.replace("-", "_"), *(p for p in parts if p),
                     datetime.date.today().isoformat()])
    return RESULTS / f"{name}.json"
