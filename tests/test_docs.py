"""The README and the pages in docs/: every relative link leads to a file or folder of the repository
(and, for a link into a Markdown file with an #anchor, to one of its headings, by GitHub's slug rule);
the README stays short; every page is reachable from it. Pure text parsing, no imports of the project."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").glob("*.md"))
MAX_README_LINES = 300

FENCE = re.compile(r"^\s*(```|~~~)")
CODE_SPAN = re.compile(r"`[^`\n]*`")
# [text](target) and ![alt](target); the text may wrap onto the next line, the target has no spaces
LINK = re.compile(r"!?\[([^\]]*)\]\(([^()\s]+)\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
EXTERNAL = re.compile(r"^(https?:|mailto:)", re.IGNORECASE)


def prose(text):
    """The text outside fenced code blocks, with inline code blanked out (kept the same length), so that
    neither code nor a `#` comment in a code block is read as a link or a heading."""
    lines, in_fence = [], False
    for line in text.split("\n"):
        if FENCE.match(line):
            in_fence = not in_fence
            lines.append("")
            continue
        lines.append("" if in_fence else CODE_SPAN.sub(lambda m: "`" + "x" * (len(m.group()) - 2) + "`", line))
    return "\n".join(lines)


def links(path):
    """(line number, target) of every Markdown link and image in the file."""
    text = prose(path.read_text(encoding="utf-8"))
    return [(text.count("\n", 0, m.start()) + 1, m.group(2)) for m in LINK.finditer(text)]


def slug(heading):
    """GitHub's anchor for a heading: its rendered text lowercased, punctuation other than '-' and '_'
    dropped, spaces turned into '-'."""
    text = LINK.sub(lambda m: m.group(1), heading)        # a link in a heading renders as its text
    text = re.sub(r"[`*]", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path):
    """Every anchor the file's headings produce; a repeated heading gets -1, -2, ... as on GitHub."""
    raw = path.read_text(encoding="utf-8").split("\n")
    seen, found, in_fence = {}, set(), False
    for line in raw:
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        m = None if in_fence else HEADING.match(line)
        if m:
            base = slug(m.group(2))
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found


def test_slug_rule():
    assert slug("Robustness: JPEG, resizing, blur and noise") == "robustness-jpeg-resizing-blur-and-noise"
    assert slug("ControlNeXt-SVD-v2: a pose-conditioned second model") == \
        "controlnext-svd-v2-a-pose-conditioned-second-model"
    assert slug("The `--model` flag, step_size (1/255)") == "the---model-flag-step_size-1255"


def test_parsing_skips_code():
    text = "a [b](c.md) `[d](e.md)`\n```\n[f](g.md)\n# not a heading\n```\n![h](i.png)"
    assert [m.group(2) for m in LINK.finditer(prose(text))] == ["c.md", "i.png"]


@pytest.mark.parametrize("page", [README] + PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    broken = []
    for line, target in links(page):
        if EXTERNAL.match(target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        where = f"{page.relative_to(ROOT)}:{line}: {target}"
        if ROOT != dest and ROOT not in dest.parents:
            broken.append(f"{where} (outside the repository)")
        elif not dest.exists():
            broken.append(f"{where} (no such file or folder)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{where} (no heading with that anchor in {dest.relative_to(ROOT)})")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_readme_is_short():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines; move depth into docs/ (at most {MAX_README_LINES})"


def test_every_page_is_linked_from_the_readme():
    assert PAGES, "docs/ holds no pages"
    linked = {(ROOT / t.partition("#")[0]).resolve() for _, t in links(README) if not EXTERNAL.match(t)}
    missing = [str(p.relative_to(ROOT)) for p in PAGES if p.resolve() not in linked]
    assert not missing, f"pages not linked from README.md: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_page_links_back_to_the_readme(page):
    assert any((page.parent / t.partition("#")[0]).resolve() == README for _, t in links(page)), page.name


def test_readme_gives_the_command_ci_runs():
    """.ci/run runs the README's test command: the README must still give it, in a code block."""
    ci = ROOT / ".ci" / "run"
    if not ci.exists():
        pytest.skip("no .ci/run in this checkout")
    command = [line.strip() for line in ci.read_text().splitlines() if line.strip()][-1]
    blocks = re.findall(r"^```bash\n(.*?)^```", README.read_text(encoding="utf-8"), re.MULTILINE | re.DOTALL)
    assert any(command in (line.split("#")[0].strip() for line in block.splitlines()) for block in blocks), command


def test_one_torch_version_for_the_tests():
    """requirements-dev.txt, the README's Tests section and .ci/run install the same torch, and the README
    gives the CPU-only install from PyTorch's own index on its first screen."""
    pinned = re.search(r"^torch==(\S+)", (ROOT / "requirements-dev.txt").read_text(), re.MULTILINE).group(1)
    readme = README.read_text(encoding="utf-8")
    tests = readme[readme.index("\n## Tests"):]
    assert re.findall(r"torch==(\S+)", tests) == [pinned]
    ci = ROOT / ".ci" / "run"
    if ci.exists():
        assert set(re.findall(r"torch==(\S+)", ci.read_text())) == {pinned}
    first_screen = readme[:readme.index("\n## Protect a photo")]
    assert "--index-url https://download.pytorch.org/whl/cpu" in first_screen
