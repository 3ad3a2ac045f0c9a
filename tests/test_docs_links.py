"""The README and docs/ as a reader meets them: every relative link leads to a file that exists, and every code
block the README marks as runnable (`<!-- runnable -->` on the line before it) runs as written."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
RUNNABLE = re.compile(r"<!-- runnable -->\n```python\n(.*?)```", re.S)


def relative_links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # code, fenced or inline, is not a link
    text = re.sub(r"`[^`\n]*`", "", text)
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:|#", t)]


def test_every_relative_link_resolves():
    broken = [f"{page.relative_to(ROOT)}: {target}" for page in PAGES for target in relative_links(page)
              if not (page.parent / target.split("#")[0]).exists()]
    assert not broken, broken
    assert any(relative_links(page) for page in PAGES)  # the check reads links at all


def test_a_broken_link_is_found(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("see [this](missing.md) and [that](https://example.org) and `[code](x.md)` and [here](#top)\n")
    assert relative_links(page) == ["missing.md"]


@pytest.mark.parametrize("block", RUNNABLE.findall((ROOT / "README.md").read_text()) or [None])
def test_the_readmes_runnable_blocks_run(block, tmp_path, monkeypatch):
    if block is None:
        pytest.skip("the README marks no block runnable")
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), {"__name__": "readme"})  # noqa: S102
