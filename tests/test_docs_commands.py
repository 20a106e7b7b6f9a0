"""The docs stay true to the code: every command they show is one the CLI accepts, and the generated reference
covers everything registered.

Commands are read from README.md and every docs/**/*.md: in fenced code blocks, each line (joined with its
backslash continuations) from ``python -m orchestrator`` on, up to a shell comment, pipe or ``&&``; in prose, every
inline code span that holds one (spans may wrap lines). Only ``orchestrator.cli.build_parser().parse_args`` runs:
nothing is executed. Placeholders the docs use for values a reader supplies:

- ``<anything>`` inside an argument (``<sweep name>``, ``scripts/studies/<study>.yaml``) stands for a word: it is
  replaced by ``x``;
- an argument that is only ``...`` ("and the other options") is dropped;
- square brackets around arguments mark them optional, as in usage lines (``sync SWEEP [--tracking-uri URI]``):
  the brackets are dropped and the arguments checked;
- a command name alone (``python -m orchestrator benchmark``, naming the command in a sentence) must be a command;
  its required arguments are not asked for.

Capitalised words (SWEEP, METHOD, NAME, STUDY.yaml) need no substitution: they are strings to the parser; where an
option takes a number the docs write a number.

The reference is checked by calling the generator (docs/hooks/reference.py) directly, without MkDocs; CI's
``mkdocs build --strict`` checks the links and the nav of the whole site.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import re
import shlex
from pathlib import Path

import pytest
import yaml

from orchestrator.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
PREFIX = "python -m orchestrator"
#: Where a shell command line ends before its comment or the next command.
SHELL_ENDS = {"|", "||", "&&", ";", ">", ">>"}


def _fenced_and_prose(text: str) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """(line number, line) of the lines inside fenced code blocks, and of the other lines."""
    code, prose, fenced = [], [], False
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        (code if fenced else prose).append((number, line))
    return code, prose


def _argv(command: str) -> list[str]:
    """The arguments after ``python -m orchestrator``, placeholders substituted (see the module docstring)."""
    words = shlex.split(command[command.index(PREFIX) + len(PREFIX):], comments=True)
    for i, word in enumerate(words):
        if word in SHELL_ENDS:
            words = words[:i]
            break
    words, optional = [w for w in words if w != "..."], False
    for i, word in enumerate(words):
        if word.startswith("[") and not optional:
            word, optional = word[1:], True
        if optional and word.endswith("]"):
            word, optional = word[:-1], False
        words[i] = re.sub(r"<[^<>]*>", "x", word)
    return words


def shown_commands(page: Path) -> list[tuple[str, str]]:
    """(where, command) of every ``python -m orchestrator`` command on a page."""
    code, prose = _fenced_and_prose(page.read_text())
    where = page.relative_to(ROOT).as_posix() if page.is_relative_to(ROOT) else page.name
    found = []
    logical, start = "", 0
    for number, line in code:
        if not logical:
            start = number
        logical += line.rstrip()
        if logical.endswith("\\"):
            logical = logical[:-1] + " "
            continue
        if PREFIX in logical:
            found.append((f"{where}:{start}", logical[logical.index(PREFIX):]))
        logical = ""
    text = "\n".join(line for _, line in prose)
    first_line = {i: n for i, (n, _) in enumerate(prose)}
    for match in re.finditer(r"`([^`]+)`", text):
        span = " ".join(match.group(1).split())
        if span.startswith(PREFIX):
            found.append((f"{where}:{first_line[text.count(chr(10), 0, match.start())]}", span))
    return found


COMMANDS = [c for page in PAGES for c in shown_commands(page)]


@pytest.fixture(scope="module")
def parser():
    return build_parser()


@pytest.mark.parametrize("where, command", COMMANDS, ids=[f"{w} {c[len(PREFIX) + 1:][:60]}" for w, c in COMMANDS])
def test_shown_command_is_accepted_by_the_cli(parser, where, command):
    argv = _argv(command)
    if len(argv) == 1:  # the command named, not run
        argv.append("--help")
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        parser.parse_args(argv)
    assert err.getvalue() == "", f"{where}: `{command}` is rejected: {err.getvalue().strip().splitlines()[-1:]}"


def test_the_quick_start_command_is_among_those_checked():
    assert ("README.md", "python -m orchestrator sweep ascood") in {(w.split(":")[0], c) for w, c in COMMANDS}


def test_commands_are_read_from_code_continuations_and_prose(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("Run `python -m orchestrator sweep\nknn --seed 3` or:\n\n```bash\n"
                    "python -m orchestrator benchmark <study>.yaml \\\n    [--dry-run]   # the plan\n```\n")
    assert [_argv(c) for _, c in shown_commands(page)] == [["benchmark", "x.yaml", "--dry-run"],
                                                            ["sweep", "knn", "--seed", "3"]]


# ---------------------------------------------------------------------------------------------- the reference
def _load_generator():
    spec = importlib.util.spec_from_file_location("docs_reference_hook", DOCS / "hooks" / "reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generator():
    return _load_generator()


@pytest.fixture(scope="module")
def pages(generator) -> dict[str, str]:
    return generator.reference_pages()


def _registered_methods() -> list[str]:
    import methods

    return methods.available()


@pytest.mark.parametrize("name", _registered_methods())
def test_every_registered_method_has_a_generated_page(pages, name):
    assert f"# {name}\n" in pages.get(f"reference/methods/{name}.md", "")


@pytest.mark.parametrize("name", _registered_methods())
def test_the_methods_index_links_every_registered_method(pages, name):
    assert f"[{name}]({name}.md)" in pages["reference/methods/index.md"]


def test_the_nav_lists_every_method_page(generator, pages):
    listed = {path for group in generator.methods_nav()[1:] for rows in group.values() for row in rows
              for path in row.values()}
    assert listed == {p for p in pages if p.startswith("reference/methods/") and not p.endswith("index.md")}


def test_the_cli_reference_has_every_command(generator, pages, parser):
    names = [name for name, _, _ in generator.subcommands(parser)]
    assert [n for n in names if f"\n## {n}\n" not in pages["reference/cli.md"]] == []


def test_the_cli_reference_has_every_option(generator, pages, parser):
    options = {o for _, _, sub in generator.subcommands(parser) for a in sub._actions for o in a.option_strings
               if a.dest != "help"}
    assert sorted(o for o in options if f"`{o}`" not in pages["reference/cli.md"]) == []


def test_the_benchmarks_reference_lists_every_benchmark(pages):
    from orchestrator.data import BENCHMARKS

    assert [n for n in BENCHMARKS.names() if f"| `{n}` |" not in pages["reference/benchmarks.md"]] == []


def test_the_search_spaces_reference_lists_every_bundled_file(pages):
    from orchestrator import search_space

    assert [n for n in search_space.available() if f"[{n}](methods/{n}.md)" not in
            pages["reference/search-spaces.md"]] == []


def test_a_literal_block_becomes_fenced_yaml(generator):
    md = generator.rst_to_markdown("Format::\n\n    name: x\n    seeds: [0]\n\nAfter.")
    assert md == "Format:\n\n```yaml\nname: x\nseeds: [0]\n```\n\nAfter.\n"


def test_roles_become_code_and_tags_are_escaped(generator):
    assert generator.rst_to_markdown("See :class:`~a.b.Head` and ``x<y>`` in <method>.") == \
        "See `Head` and `x<y>` in &lt;method>.\n"


# ---------------------------------------------------------------------------------------------- the pages
def _nav_paths(nav) -> list[str]:
    if isinstance(nav, list):
        return [p for item in nav for p in _nav_paths(item)]
    if isinstance(nav, dict):
        return [p for value in nav.values() for p in _nav_paths(value)]
    return [nav]


def test_every_nav_entry_is_a_page_or_generated(pages):
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]
    assert [p for p in _nav_paths(nav) if p not in pages and not (DOCS / p).is_file()] == []


def test_readme_is_at_most_150_lines():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 150


def test_readme_links_point_to_files_that_exist():
    links = re.findall(r"\]\(([^)\s]+)\)", (ROOT / "README.md").read_text())
    local = [link.split("#")[0] for link in links if "://" not in link and not link.startswith("#")]
    assert [link for link in local if not (ROOT / link).exists()] == []
