"""Markdown from a result JSON: one renderer, so every page in benchmarks/results/ shows its
provenance (device, versions, date, command) the same way and cannot drift from its figures.

    python -m benchmarks render benchmarks/results/X.json [...]   # writes X.md beside each
    python -m benchmarks render --all                              # every JSON in results/

Suites call it themselves after writing their JSON; run it by hand after editing a JSON (to add
`notes`, say).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import record

HEADER = ("<!-- Rendered by `python -m benchmarks render` from {name}: edit the JSON, not this "
          "file. -->")


def cell(value) -> str:
    """A table cell: None as '-', floats to 4 significant digits, '|' escaped."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(table: dict) -> list[str]:
    def line(values) -> str:
        return "|" + "|".join(f" {text} " if (text := cell(v)) else " " for v in values) + "|"

    return [line(table["columns"]), "|" + "---|" * len(table["columns"]),
            *(line(row) for row in table["rows"])]


def _device(device: dict) -> str:
    text = device.get("name", record.UNKNOWN)
    if device.get("kind") == "cpu":
        isa = device.get("isa", record.UNKNOWN)
        extra = [f"ISA {' '.join(isa) if isinstance(isa, list) else isa}"]
        extra += [f"LLVM mcpu {device['llvm_mcpu']}"] if device.get("llvm_mcpu") else []
        extra += [f"{device['cores']} cores"] if device.get("cores") else []
        text += f" ({'; '.join(extra)})"
    elif device.get("kind") == "gpu" and isinstance(device.get("host_cpu"), dict):
        text += f"; host CPU {_device(device['host_cpu'])}"
    return text


def _versions(versions: dict) -> str:
    keys = [*record.VERSION_KEYS, *(k for k in versions if k not in record.VERSION_KEYS)]
    return ", ".join(f"{k} {versions[k]}" for k in keys if k in versions)


def render(doc: dict, name: str = "the JSON beside it") -> str:
    lines = [HEADER.format(name=name), "", f"# {doc['title']}", ""]
    meta = [["date", doc["date"]], ["device", _device(doc["device"])],
            ["versions", _versions(doc["versions"])], ["suite", doc["suite"]]]
    multiline = "\n" in doc["command"]
    if not multiline:
        meta.append(["command", f"`{doc['command']}`"])
    provenance = doc.get("provenance")
    if provenance:
        meta.append(["provenance", provenance])
    lines += markdown_table({"columns": ["", ""], "rows": meta}) + [""]
    if multiline:
        lines += ["Commands:", "", "```bash", doc["command"], "```", ""]
    for section in doc["sections"]:
        if section.get("heading"):
            lines += [f"## {section['heading']}", ""]
        if section.get("notes"):
            lines += [section["notes"].rstrip("\n"), ""]
        if section.get("table"):
            lines += markdown_table(section["table"]) + [""]
    if doc.get("files"):
        lines += ["Files beside this one: " + ", ".join(f"[{f}]({f})" for f in doc["files"]), ""]
    if doc.get("notes"):
        lines += ["## Notes", "", doc["notes"].rstrip("\n"), ""]
    return "\n".join(lines)


def write_markdown(json_path: Path) -> Path:
    json_path = Path(json_path)
    doc = json.loads(json_path.read_text())
    wrong = record.problems(doc)
    if wrong:
        raise SystemExit(f"{json_path}: not a result document: {'; '.join(wrong)}")
    out = json_path.with_suffix(".md")
    out.write_text(render(doc, json_path.name))
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks render",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("json", nargs="*", type=Path, help="result JSON files")
    parser.add_argument("--all", action="store_true",
                        help=f"every JSON in {record.RESULTS.relative_to(record.ROOT)}/")
    args = parser.parse_args(argv)
    paths = args.json + (sorted(record.RESULTS.glob("*.json")) if args.all else [])
    if not paths:
        parser.error("give result JSON files or --all")
    for path in paths:
        print(f"wrote {write_markdown(path)}")
