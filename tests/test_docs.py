"""The README and docs/: every relative link leads somewhere, and every page is reachable.

A link `[text](target)` or `[text](target#anchor)` in README.md or docs/*.md must name a file
or folder that exists, relative to the page's own folder (so docs/ links code as
`../charrnn/config.py`), inside the repository; an `#anchor` must be a heading of the target
(or of the page itself, for `#anchor` alone), by GitHub's rules for heading ids. Each
docs/*.md must be linked from README.md or docs/README.md. The checker is tested on pages
made to fail, so a check that stopped finding anything would fail too.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
INDEXES = (ROOT / "README.md", DOCS / "README.md")
README_MAX_LINES = 250  # the front door: the reference lives in docs/

FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"(`+).*?\1")
INLINE_LINK = re.compile(
    r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)"
)
REFERENCE_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
EXTERNAL = re.compile(r"^([a-z][a-z0-9+.-]*:|//)", re.I)


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def prose_lines(text: str):
    """(line number, line) outside fenced code blocks."""
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield number, line


def slug(heading: str) -> str:
    """GitHub's id for a heading: the rendered text, lower case, punctuation dropped except
    `-` and `_`, each space a `-`."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = text.replace("`", "").replace("*", "")
    text = re.sub(r"(?<!\w)_+|_+(?!\w)", "", text)  # _emphasis_, not snake_case
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The ids GitHub gives the headings of a markdown file (a repeated one gets -1, -2, ...)."""
    seen: dict[str, int] = {}
    ids = set()
    for _, line in prose_lines(path.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        ids.add(base if count == 0 else f"{base}-{count}")
    return ids


def links(path: Path) -> list[tuple[int, str]]:
    """(line, target) of every link and image in a markdown file, code left out."""
    found = []
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        definition = REFERENCE_DEF.match(line)
        if definition:
            found.append((number, definition.group(1)))
            continue
        bare = INLINE_CODE.sub("", line)
        found += [(number, target) for target in INLINE_LINK.findall(bare)]
    return found


def broken_links(files: list[Path], root: Path) -> list[str]:
    """What is wrong with the relative links of these files, one line each."""
    problems = []
    for page in files:
        where = page.relative_to(root)
        for number, target in links(page):
            if not target:
                problems.append(f"{where}:{number}: an empty link")
                continue
            if EXTERNAL.match(target):
                continue
            name, _, anchor = target.partition("#")
            dest = (page.parent / name).resolve() if name else page.resolve()
            if not dest.is_relative_to(root.resolve()):
                problems.append(f"{where}:{number}: {target} leads out of the repository")
            elif not dest.exists():
                problems.append(f"{where}:{number}: {target}: no such file")
            elif anchor:
                if dest.suffix != ".md":
                    problems.append(
                        f"{where}:{number}: {target}: #anchor on a file that is not markdown"
                    )
                elif anchor not in anchors(dest):
                    problems.append(
                        f"{where}:{number}: {target}: no heading #{anchor} in {name or where}"
                    )
    return problems


def orphans(docs: Path, indexes: tuple[Path, ...]) -> list[str]:
    """docs/*.md pages that none of the index pages links to."""
    linked = set()
    for index in indexes:
        if index.exists():
            for _, target in links(index):
                name = target.partition("#")[0]
                if name and not EXTERNAL.match(target):
                    linked.add((index.parent / name).resolve())
    return [p.name for p in sorted(docs.glob("*.md")) if p.resolve() not in linked]


# ------------------------------------------------------------------ the repository


def test_every_relative_link_in_the_readme_and_docs_resolves():
    assert (DOCS / "README.md").exists(), "docs/README.md, the index of the docs, is missing"
    problems = broken_links(pages(), ROOT)
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_the_checker_sees_the_links_there_are():
    # If the link pattern stopped matching, the test above would pass on anything.
    assert len(links(ROOT / "README.md")) >= len(list(DOCS.glob("*.md")))
    assert len(links(DOCS / "README.md")) >= len(list(DOCS.glob("*.md"))) - 1
    found = {(p.relative_to(ROOT).as_posix(), t) for p in pages() for _, t in links(p)}
    assert ("docs/corpora.md", "how-it-works.md") in found  # a link inside a bold paragraph
    assert ("docs/options.md", "large-vocabularies.md") in found  # a link inside a table cell


def test_no_docs_page_is_orphaned():
    lost = orphans(DOCS, INDEXES)
    assert not lost, f"docs pages linked from neither README.md nor docs/README.md: {lost}"


def test_the_readme_stays_the_front_door():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines: the reference belongs in docs/ (see docs/README.md)"
    )


# ------------------------------------------------------------------ the checker itself


@pytest.mark.parametrize(
    "heading, expected",
    [
        ("Fine-tuning: `--init-from`", "fine-tuning---init-from"),
        (
            "Large vocabularies (Korean, Chinese, Japanese)",
            "large-vocabularies-korean-chinese-japanese",
        ),
        ("Throughput: `make bench`", "throughput-make-bench"),
        ("What charrnn does when things go wrong", "what-charrnn-does-when-things-go-wrong"),
        ("Scaling out: torchrun and DDP", "scaling-out-torchrun-and-ddp"),
        ("The `DEFAULT_EPOCHS` knob", "the-default_epochs-knob"),
        ("Über *fast* [links](x.md)", "über-fast-links"),
    ],
)
def test_slugs_follow_githubs_rules(heading, expected):
    assert slug(heading) == expected


def make_tree(tmp_path: Path, readme: str, pages: dict[str, str]) -> list[Path]:
    (tmp_path / "docs").mkdir()
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "README.md").write_text(readme)
    for name, text in pages.items():
        (tmp_path / "docs" / name).write_text(text)
    return [tmp_path / "README.md", *sorted((tmp_path / "docs").glob("*.md"))]


GOOD_PAGE = (
    "# A page\n\n## Twice\n\n## Twice\n\nSee [code](../code.py) and [back](../README.md#top).\n"
)


def test_the_checker_passes_good_links(tmp_path):
    files = make_tree(
        tmp_path,
        "# Top\n\n[a](docs/a.md#twice-1) [b](docs/a.md#a-page) [self](#top) [web](https://x.org/y)\n",
        {"a.md": GOOD_PAGE},
    )
    assert broken_links(files, tmp_path) == []


@pytest.mark.parametrize(
    "link, complaint",
    [
        ("[gone](docs/gone.md)", "no such file"),
        ("[code](charrnn/trainer.py)", "no such file"),
        ("[bad anchor](docs/a.md#nowhere)", "no heading #nowhere"),
        ("[third](docs/a.md#twice-2)", "no heading #twice-2"),
        ("[self](#nowhere)", "no heading #nowhere"),
        ("[up](../outside.md)", "out of the repository"),
        ("[anchor on code](code.py#L1)", "not markdown"),
        ("[empty]()", "an empty link"),
        ("[ref]: docs/gone.md", "no such file"),
    ],
)
def test_the_checker_finds_a_broken_link(tmp_path, link, complaint):
    files = make_tree(tmp_path, f"# Top\n\n{link}\n", {"a.md": GOOD_PAGE})
    problems = broken_links(files, tmp_path)
    assert len(problems) == 1 and complaint in problems[0], problems
    assert problems[0].startswith("README.md:3:")


def test_a_docs_link_to_code_must_climb_out_of_docs(tmp_path):
    files = make_tree(tmp_path, "# Top\n", {"a.md": "# A\n\n[code](code.py)\n"})
    assert broken_links(files, tmp_path) == ["docs/a.md:3: code.py: no such file"]


def test_links_in_code_are_not_links(tmp_path):
    readme = "# Top\n\n```\n[not a link](nowhere.md)\n```\n\nThe `[x](nowhere.md)` form.\n"
    files = make_tree(tmp_path, readme, {})
    assert links(files[0]) == [] and broken_links(files, tmp_path) == []


def test_an_unlisted_page_is_an_orphan(tmp_path):
    make_tree(
        tmp_path,
        "# Top\n\n[a](docs/a.md) [docs](docs/README.md)\n",
        {"a.md": "# A\n", "b.md": "# B\n"},
    )
    indexes = (tmp_path / "README.md", tmp_path / "docs" / "README.md")
    assert orphans(tmp_path / "docs", indexes) == ["b.md"]
    (tmp_path / "docs" / "README.md").write_text("# Docs\n\n[b](b.md#b)\n")
    assert orphans(tmp_path / "docs", indexes) == []


@pytest.mark.parametrize("command", ["train", "sample", "eval", "info"])
def test_every_option_of_the_main_commands_is_in_the_options_page(command):
    import typer.main

    from charrnn.cli.app import app

    page = (DOCS / "options.md").read_text(encoding="utf-8")
    params = typer.main.get_command(app).commands[command].params
    flags = [flag for p in params for flag in p.opts if flag.startswith("--")]
    assert flags  # the parse still finds them
    missing = [flag for flag in flags if f"`{flag}`" not in page and f"`{flag} " not in page]
    assert not missing, f"docs/options.md lacks {missing} of charrnn {command}"
