"""Every link between the project's documents leads somewhere: files exist, and ``#anchors`` name a heading.

The README and docs/ cross-reference each other by section; a renamed heading would otherwise leave
a reader at the top of a thousand-line page.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6} (.+)$", re.MULTILINE)
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def github_anchor(title: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


def anchors_of(document: Path) -> set[str]:
    text = FENCE.sub("", document.read_text(encoding="utf-8"))
    return {github_anchor(title) for title in HEADING.findall(text)}


def local_links(document: Path) -> list[str]:
    text = FENCE.sub("", document.read_text(encoding="utf-8"))
    return [target for target in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", target)]


def test_github_anchor_follows_githubs_rule() -> None:
    assert github_anchor("HTTP API (one image at a time)") == "http-api-one-image-at-a-time"
    assert (github_anchor("Targets, and what the shipped model measures")
            == "targets-and-what-the-shipped-model-measures")
    assert github_anchor("The runs of `make model`") == "the-runs-of-make-model"


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.relative_to(REPO).as_posix())
def test_every_local_link_resolves(document: Path) -> None:
    links = local_links(document)
    broken = []
    for target in links:
        path_part, _, anchor = target.partition("#")
        destination = (document.parent / path_part).resolve() if path_part else document
        if not destination.exists():
            broken.append(f"{target}: no file {destination.relative_to(REPO)}")
        elif anchor and destination.suffix == ".md" and anchor not in anchors_of(destination):
            broken.append(f"{target}: no heading with anchor #{anchor} in {destination.relative_to(REPO)}")
    assert not broken, f"{document.relative_to(REPO)} links nowhere:\n" + "\n".join(broken)


def test_the_readme_lists_its_sections() -> None:
    readme = REPO / "README.md"
    in_page = {target[1:] for target in local_links(readme) if target.startswith("#")}
    top_level = {github_anchor(title) for title in re.findall(r"^## (.+)$", FENCE.sub("", readme.read_text()),
                                                              re.MULTILINE)}
    assert top_level <= in_page, f"sections missing from the contents: {sorted(top_level - in_page)}"
