"""The documentation: every relative link in README.md and docs/ resolves, and docs/results.md is what
`benchmarks/write_results.py` makes from the result files (so the docs cannot drift from the data)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_every_relative_link_in_the_readme_and_docs_resolves() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    assert len(pages) > 1
    for page in pages:
        for target in LINK.findall(page.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            assert (page.parent / target).exists(), f"{page.relative_to(ROOT)} links to missing {target}"


def test_the_generated_results_page_is_current() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "write_results.py"), "--check"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
