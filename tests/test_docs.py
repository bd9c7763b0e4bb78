"""The README and docs/ cannot drift from the code: the command reference is generated from the
CLI, every relative link names a file of the repository, and the README stays an entry page."""

import re
from pathlib import Path
from urllib.parse import unquote

import cli_reference

REPO = cli_reference.REPO
README = REPO / "README.md"
README_MAX_LINES = 250

_FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_DEFINITION = re.compile(r"^ {0,3}\[[^\]\n]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.M)
_HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", re.M)


def pages() -> list[Path]:
    return [README, *sorted((REPO / "docs").glob("*.md"))]


def _prose(text: str) -> str:
    """The text outside code blocks and code spans (where `[x](y)` is not a link)."""
    return _CODE_SPAN.sub("", _FENCE.sub("", text))


def links(text: str) -> list[str]:
    prose = _prose(text)
    return _LINK.findall(prose) + _DEFINITION.findall(prose)


def anchors(markdown: str) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces as '-'."""
    found, seen = set(), {}
    for heading in _HEADING.findall(_FENCE.sub("", markdown)):
        slug = re.sub(r"[^\w\- ]", "", heading.replace("`", "").strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        found.add(slug if n == 0 else f"{slug}-{n}")
    return found


def broken_links(page: Path, repo: Path = REPO) -> list[str]:
    """Relative links of a Markdown page that name no file or directory of `repo`, or no heading
    of the page they point into."""
    broken = []
    for target in links(page.read_text()):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # https:, mailto:, ...
            continue
        path, _, fragment = unquote(target).partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.is_relative_to(repo.resolve()):
            broken.append(f"{target} (outside the repository)")
        elif not resolved.exists():
            broken.append(f"{target} (no such file)")
        elif fragment and resolved.suffix == ".md" and resolved.is_file() \
                and fragment.lower() not in anchors(resolved.read_text()):
            broken.append(f"{target} (no heading #{fragment} in {resolved.name})")
    return broken


def test_docs_cli_md_matches_the_cli():
    current = cli_reference.CLI_MD.read_text() if cli_reference.CLI_MD.is_file() else ""
    assert current == cli_reference.document(), (
        f"docs/cli.md is out of date with `tvmopt --help`: run {cli_reference.REGENERATE}")


def test_every_relative_link_in_the_readme_and_docs_names_a_file_of_the_repository():
    docs = pages()
    assert len(docs) > 5 and (REPO / "docs" / "index.md") in docs
    broken = {str(p.relative_to(REPO)): b for p in docs if (b := broken_links(p))}
    assert not broken, f"broken relative links: {broken}"


def test_the_link_check_finds_broken_links(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "there.md").write_text("# A heading\n\ntext\n")
    page = tmp_path / "docs" / "page.md"
    page.write_text(
        "# Page\n\n[ok](../there.md) [ok](../there.md#a-heading) [ok](#page) [ok](../docs/)\n"
        "[web](https://example.com/x) `[code](nowhere.md)`\n\n```\n[block](nowhere.md)\n```\n\n"
        "[gone](../missing.md) ![img](img/none.png) [bad anchor](../there.md#no-such-heading)\n"
        "[up](../../outside.md) [local](#nope)\n\n[ref]: ../also-missing.md\n")
    assert broken_links(page, tmp_path) == [
        "../missing.md (no such file)", "img/none.png (no such file)",
        "../there.md#no-such-heading (no heading #no-such-heading in there.md)",
        "../../outside.md (outside the repository)", "#nope (no heading #nope in page.md)",
        "../also-missing.md (no such file)"]


def test_the_readme_stays_an_entry_page():
    """Figures and suite times live in benchmarks/results/, the manual in docs/."""
    lines = README.read_text().splitlines()
    assert len(lines) < README_MAX_LINES, (
        f"README.md has {len(lines)} lines: move detail into docs/ (under {README_MAX_LINES})")
    assert "bash .ci/run" in README.read_text(), "the README's test command is what CI runs"
