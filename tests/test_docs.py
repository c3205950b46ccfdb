"""The README front page and the reference pages under docs/: every relative link and image
resolves (file and, where given, heading anchor), and the README's two commands are the ones CI
runs.  The README was split into docs/ pages that link each other by file name and anchor; a
renamed heading or a moved page breaks those links silently on GitHub, so they are checked here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

#: [text](target) and ![alt](target); the target stops at whitespace or the closing bracket
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)\)")
APP_COMMAND = "scripts/setup.sh && .venv/bin/streamlit run app.py"
TEST_COMMAND = "scripts/setup.sh --test && .venv/bin/python -m pytest"


def _prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks (links inside code are not links)."""
    lines, in_code = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            in_code = not in_code
            continue
        if not in_code:
            lines.append(line)
    return lines


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: its rendered text, lower-cased, without punctuation
    (anything but letters, digits, '_', '-' and spaces), spaces turned into hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link renders as its text
    text = text.replace("`", "").replace("*", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    result = set()
    for line in _prose_lines(page.read_text(encoding="utf-8")):
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        anchor = github_anchor(match.group(1))
        count = seen.get(anchor, 0)
        seen[anchor] = count + 1
        result.add(anchor if count == 0 else f"{anchor}-{count}")
    return result


def relative_links(page: Path) -> list[str]:
    prose = "\n".join(_prose_lines(page.read_text(encoding="utf-8")))  # link text may span lines
    return [target for target in LINK.findall(prose)
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target)]  # http:, https:, mailto: …


def test_github_anchor_matches_githubs_rules():
    assert github_anchor("Default mode vs `--compat reference`") == "default-mode-vs---compat-reference"
    assert github_anchor("ActiveFT (`--method activeft`)") == "activeft---method-activeft"
    assert github_anchor("Finetune & compare") == "finetune--compare"
    assert github_anchor("What is real, what is measured, what is missing") == (
        "what-is-real-what-is-measured-what-is-missing")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_image_resolves(page):
    broken = []
    for target in relative_links(page):
        path_part, _, anchor = target.partition("#")
        linked = (page.parent / path_part).resolve() if path_part else page
        if not linked.exists():
            broken.append(f"{target}: no file {linked.relative_to(ROOT) if linked.is_relative_to(ROOT) else linked}")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}: no heading with anchor #{anchor} in {linked.name}")
    assert not broken, f"{page.relative_to(ROOT)} has broken links:\n" + "\n".join(broken)


def test_readme_links_every_docs_page():
    readme_targets = {t.partition("#")[0] for t in relative_links(ROOT / "README.md")}
    unlinked = [p.name for p in PAGES[1:] if f"docs/{p.name}" not in readme_targets]
    assert not unlinked, f"README.md's Reference list does not link: {', '.join(unlinked)}"


def test_readme_states_the_two_commands_ci_runs():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert APP_COMMAND in readme
    assert TEST_COMMAND in readme
    assert TEST_COMMAND in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
