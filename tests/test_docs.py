"""Every command the docs show is one the code takes, so a newcomer who copies it gets a run, not an argparse
error or a recipe error.

From each fenced code block of README.md and docs/*.md, every line that starts with `fastsr ` (with its `\\`
continuations joined and its trailing `# comment` dropped) must parse with the CLI's own parser; a
`fastsr train RECIPE key=value ...` line must name a recipe that exists (a packaged name, or a path relative to
the repository root) and overrides of valid keys, loaded as `fastsr train` loads them. The same holds for the
recipe and overrides of `accelerate launch ... fastsr/train.py RECIPE ...` lines and of `launch.sh` lines
(parsed by launch.sh's own parser, `fastsr.cluster.parse`). No line is skipped: a documented command is meant to
run as shown, so placeholders stay in prose, not in code blocks. Also: the README keeps the quick start's two
commands (CI runs them) and every relative link in the docs points to a file and heading that exist.

Reads only the repository's own files; no command is run.
"""

from __future__ import annotations

import re
import shlex
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import pytest

from fastsr.cli import parse_command
from fastsr.cluster import parse as parse_launch_sh
from fastsr.config import section_keys
from fastsr.errors import FastsrError
from fastsr.recipe import Recipe, find_recipe, load_recipe

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Override keys whose value names a file, folder or module that the docs' example has and this test does not
# (a plugin module is imported as the recipe is read; the others are opened only when a run starts). Where
# a line's overrides fail to load, these are left out and only checked to be recipe keys.
NEEDS_A_FILE = {"plugins", "train.init_from", "train.resume", "loss.vgg_weights", "data.source", "data.val_source",
                "data.val_sets", "data.cache", "data.benchmark_root", "train.metric_weights"}

QUICK_START = '```bash\npip install -e ".[dev]" && fastsr quickstart\npython -m pytest -q\n```\n'


@dataclass(frozen=True)
class Command:
    doc: Path
    line: int  # 1-based, of the command's first line
    text: str  # continuations joined

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"


def code_blocks(text: str) -> list[tuple[int, list[str]]]:
    """(1-based number of the first line inside, its lines) of each fenced code block."""
    blocks, current, start, fence = [], None, 0, ""
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if current is None:
            match = re.match(r"(`{3,}|~{3,})", stripped)
            if match:
                current, start, fence = [], number + 1, match.group(1)
        elif stripped.startswith(fence) and stripped.strip(fence[0]) == "":
            blocks.append((start, current))
            current = None
        else:
            current.append(line)
    return blocks


def commands(doc: Path) -> list[Command]:
    """The shell commands of `doc`'s code blocks, each with its `\\` continuations joined."""
    found = []
    for start, lines in code_blocks(doc.read_text(encoding="utf-8")):
        i = 0
        while i < len(lines):
            first, text = i, lines[i].strip()
            while text.endswith("\\") and i + 1 < len(lines):
                i += 1
                text = text[:-1] + " " + lines[i].strip()
            found.append(Command(doc, start + first, text))
            i += 1
    return found


def words(command: Command) -> list[str]:
    try:
        return shlex.split(command.text, comments=True)
    except ValueError as err:  # an unclosed quote
        pytest.fail(f"{command.where}: cannot be split as a shell line ({err}): {command.text}")


ALL = [c for doc in DOCS for c in commands(doc)]
FASTSR = [c for c in ALL if c.text.startswith("fastsr ")]
ACCELERATE = [c for c in ALL if c.text.startswith("accelerate launch ")]
LAUNCH_SH = [c for c in ALL if re.search(r"(^|\s)(\./|bash )?launch\.sh\s", c.text)]


def check_recipe(command: Command, recipe: str, overrides: list[str]) -> None:
    """`recipe` exists (from the repository root) and `overrides` load on it, as `fastsr train` loads them;
    overrides of NEEDS_A_FILE keys that fail to load are left out, then checked to be recipe keys."""
    try:
        find_recipe(recipe)
    except FastsrError as err:
        pytest.fail(f"{command.where}: {command.text}\n  the recipe does not exist: {err}")
    try:
        load_recipe(recipe, overrides)
        return
    except FastsrError as err:
        first_error = err
    kept = [o for o in overrides if o.partition("=")[0].strip() not in NEEDS_A_FILE]
    left_out = [o.partition("=")[0].strip() for o in overrides if o not in kept]
    if not left_out:
        pytest.fail(f"{command.where}: {command.text}\n  {first_error}")
    unknown = [key for key in left_out if key not in section_keys(Recipe)]
    assert not unknown, f"{command.where}: {command.text}\n  not recipe keys: {unknown}"
    try:
        load_recipe(recipe, kept)
    except FastsrError as err:
        pytest.fail(f"{command.where}: {command.text}\n  {err}")


@pytest.fixture(autouse=True)
def from_the_repository_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # recipes/x.yaml and fastsr/train.py are paths from the root, as the docs show them


def test_the_docs_show_commands():
    assert len(DOCS) > 1, "docs/*.md not found"
    assert len(FASTSR) >= 20 and ACCELERATE and LAUNCH_SH, (len(FASTSR), len(ACCELERATE), len(LAUNCH_SH))


def test_the_readme_keeps_the_quick_start_commands():
    assert QUICK_START in (ROOT / "README.md").read_text(encoding="utf-8"), \
        "README.md's quick start must stay exactly these two commands (CI runs them)"


@pytest.mark.parametrize("command", FASTSR, ids=lambda c: c.where)
def test_a_fastsr_command_parses(command):
    args = words(command)
    try:
        parsed = parse_command(args[1:])
    except SystemExit:  # argparse printed why on stderr
        pytest.fail(f"{command.where}: `fastsr` refuses this command: {command.text}")
    if parsed.command == "train":
        check_recipe(command, parsed.recipe, parsed.overrides)


@pytest.mark.parametrize("command", ACCELERATE, ids=lambda c: c.where)
def test_an_accelerate_launch_names_a_recipe_that_loads(command):
    args = words(command)
    script = next((i for i, arg in enumerate(args) if arg.endswith("fastsr/train.py")), None)
    assert script is not None and script + 1 < len(args), f"{command.where}: no `fastsr/train.py RECIPE`"
    assert (ROOT / args[script]).is_file(), f"{command.where}: {args[script]} does not exist"
    check_recipe(command, args[script + 1], args[script + 2:])


@pytest.mark.parametrize("command", LAUNCH_SH, ids=lambda c: c.where)
def test_a_launch_sh_line_names_a_recipe_that_loads(command):
    args = words(command)
    at = next(i for i, arg in enumerate(args) if arg.endswith("launch.sh"))
    try:
        parsed = parse_launch_sh([a for a in args[at + 1:] if a != "--dry-run"])
    except SystemExit:
        pytest.fail(f"{command.where}: launch.sh refuses this command: {command.text}")
    check_recipe(command, parsed.recipe, parsed.overrides)


# ---------------------------------------------------------------------------------------------
# links


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation (but - and _) dropped, spaces as hyphens."""
    text = re.sub(r"`|\*\*?|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    kept = "".join(ch for ch in text if ch in "-_ " or unicodedata.category(ch)[0] in "LN")
    return kept.replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    text = doc.read_text(encoding="utf-8")
    inside = {n for start, lines in code_blocks(text) for n in range(start, start + len(lines))}
    return {slug(line.lstrip("#")) for n, line in enumerate(text.splitlines(), 1)
            if n not in inside and re.match(r"#{1,6} ", line)}


def links(doc: Path) -> list[tuple[int, str]]:
    text = doc.read_text(encoding="utf-8")
    inside = {n for start, lines in code_blocks(text) for n in range(start, start + len(lines))}
    return [(n, target) for n, line in enumerate(text.splitlines(), 1) if n not in inside
            for target in re.findall(r"\]\(([^)\s]+)\)", line)]


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: str(d.relative_to(ROOT)))
def test_relative_links_point_to_files_and_headings_that_exist(doc):
    broken = []
    for number, target in links(doc):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        if not file.exists():
            broken.append(f"{doc.relative_to(ROOT)}:{number}: {target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{doc.relative_to(ROOT)}:{number}: {target}: no heading #{anchor} in {file.name}")
    assert not broken, "\n".join(broken)
