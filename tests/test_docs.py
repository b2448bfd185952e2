"""The documentation: every relative link in README.md and docs/ resolves; docs/results.md and docs/configuration.md
are what `benchmarks/write_results.py` (`make docs`) makes from the result files and from config.py (so the docs
cannot drift from the data); the README stays a front door; no page speaks of the project's own bookkeeping (issue
numbers, sessions) or points at files outside the repository."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_every_relative_link_in_the_readme_and_docs_resolves() -> None:
    assert len(pages()) > 1
    for page in pages():
        for target in LINK.findall(page.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            assert (page.parent / target).exists(), f"{page.relative_to(ROOT)} links to missing {target}"


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


# What user-facing text must not say: issue numbers, the project's own work, files outside the repository.
INTERNAL = [
    re.compile(r"(?<!\w)#\d{2,}\b"),  # an issue or PR number, not a link anchor (LOG.md#2026-12-01)
    re.compile(r"\bissues?\b", re.IGNORECASE),
    re.compile(r"\bsessions?\b", re.IGNORECASE),
    re.compile(r"MEASURED\.md"),
    re.compile(r"\.\./shared"),
    re.compile(r"\bour (own )?changes?\b", re.IGNORECASE),
    re.compile(r"\bwas lent\b", re.IGNORECASE),
]


def test_no_page_names_an_issue_our_own_work_or_a_file_outside_the_repository() -> None:
    found = []
    for page in pages():
        for number, line in enumerate(page.read_text().splitlines(), 1):
            found += [f"{page.relative_to(ROOT)}:{number}: {p.pattern}" for p in INTERNAL if p.search(line)]
    assert not found, "\n".join(found)


def test_the_readme_is_a_front_door() -> None:
    lines = (ROOT / "README.md").read_text().count("\n")
    assert lines <= 260, f"README.md has {lines} lines: move details into docs/"


def test_the_generated_pages_are_current() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "write_results.py"), "--check"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
