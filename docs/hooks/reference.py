"""The reference pages, generated at build time from the code's declarations (a MkDocs hook: mkdocs.yml `hooks:`).

Why generated: a method, benchmark, CLI flag or search space added to the code must appear in the docs without
anyone editing them, and a page written by hand drifts. Everything is read the way `python -m orchestrator list`
reads it: methods and benchmarks from source through their registries (methods.catalog(), BENCHMARKS.entries()),
knobs from their declarations (orchestrator.knobs), the CLI from `orchestrator.cli.build_parser()`, search spaces
through `orchestrator.search_space.load`, formats from their modules' docstrings. So building the docs imports
neither torch nor Ray, and a module that declares something wrongly shows the error on its page instead of hiding
the others.

The generator, :func:`reference_pages`, is plain Python (tests/test_docs_commands.py calls it without MkDocs); the
MkDocs events at the end add its pages to the site and its method pages to the nav.
"""
from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
#: The nav entry (mkdocs.yml) that the method pages are inserted under.
METHODS_INDEX = "reference/methods/index.md"
#: A hand-written page may hold this marker; it is replaced by the table of post-hoc methods by what they read.
METHODS_BY_READS_MARKER = "<!-- oodsweep:methods-by-reads -->"
#: ``<!-- oodsweep:docstring orchestrator/cache.py -->`` in a hand-written page is replaced by that module's
#: docstring, so an explanation quotes the code's own account of itself (layouts, formats) and cannot drift from it.
DOCSTRING_MARKER = re.compile(r"<!-- oodsweep:docstring (\S+) -->")
#: Measured results (study leaderboards, comparisons) copied into the site under this folder, so pages can link them.
RESULTS_SRC, RESULTS_DST = "scripts/results", "results"

# What each key of a study file means. Keys the code accepts (orchestrator.benchmark.plan.STUDY_KEYS/ENTRY_KEYS)
# but this table lacks are still listed, pointing to the code.
STUDY_KEY_HELP = {
    "name": "the study's name: names its sweeps, its folder and its MLflow run (default: the file's stem)",
    "benchmarks": "built-in benchmark names or custom benchmark YAML files (relative to the study file)",
    "seeds": "distinct integers; each seed is an independent repeat of the whole selection",
    "smoke_test": "tiny data, 1 epoch (CI)",
    "fpr_convention": "`classic` (default) or `openood`; named in the leaderboard",
    "max_concurrent": "trials at once in every sweep",
    "max_concurrent_sweeps": "sweeps at once at most (`--max-concurrent-sweeps` overrides it; default: as many as the "
                             "cluster's free resources allow)",
    "max_id_acc_drop": "points of ID validation accuracy a trained method's chosen configuration may lose against the "
                       "cross-entropy classifier of the same recipe and seed, or `none` (an entry's overrides it)",
    "entries": "label → entry (below); a sweep per (entry, benchmark, seed)",
}
ENTRY_KEY_HELP = {
    "method": "the method (default: the entry's label)",
    "search_space": "a search-space YAML, relative to the study file (default: the method's bundled one)",
    "fixed": "a configuration: one trial, nothing searched (not with `search_space`)",
    "num_samples": "trials of this entry's sweeps",
    "epochs": "training epochs",
    "max_concurrent": "trials at once in this entry's sweeps",
    "max_id_acc_drop": "this entry's ID-accuracy margin (points, or `none`), over the study's",
    "baseline": "another entry's label: the leaderboard gives the paired per-seed difference to it",
}


# ---------------------------------------------------------------------------------------------- text helpers
def cell(text: Any) -> str:
    """A Markdown table cell: one line; outside code spans, pipes and ``<`` escaped (inside them the table
    extension ignores pipes)."""
    return _escape_html(" ".join(str(text).split()), pipes=True)


def _escape_html(text: str, pipes: bool = False) -> str:
    """``<`` outside code spans as ``&lt;`` (else Markdown reads ``<method>`` as an HTML tag and drops it)."""
    parts = text.split("`")
    for i in range(0, len(parts), 2):
        parts[i] = parts[i].replace("<", "&lt;")
        if pipes:
            parts[i] = parts[i].replace("|", "\\|")
    return "`".join(parts)


def value(v: Any) -> str:
    """A value as a user writes it in YAML."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(value(x) for x in v) + "]"
    return str(v)


def _inline(text: str) -> str:
    """reST inline markup → Markdown: roles and double backticks become code; ``<`` outside code is escaped."""
    text = re.sub(r":[a-z]+:`~[\w.]*?(\w+)`", r"`\1`", text)
    text = re.sub(r":[a-z]+:`([^`]+)`", r"`\1`", text)
    text = re.sub(r"``(.+?)``", r"`\1`", text)
    return _escape_html(text)


def _plain(text: str) -> str:
    """reST inline markup inside a code block: the text alone (``k`` → k, :mod:`x.y` → x.y)."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", text)
    return re.sub(r"``(.+?)``", r"\1", text)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def rst_to_markdown(doc: str) -> str:
    """A module docstring (reST-ish, as this project writes them) as Markdown: literal blocks (``::``,
    ``.. code-block::``) and indented formula blocks become fenced code; a list gets the blank line Markdown needs
    before it."""
    lines = doc.expandtabs().splitlines()
    out: list[str] = []
    in_list = False
    i = 0

    def fence(start: int, base: int, lang: str) -> int:
        """Emit the block of lines indented deeper than ``base`` from ``start``; return the next line's index."""
        j = start
        while j < len(lines) and not lines[j].strip():
            j += 1
        block = []
        while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) > base):
            block.append(lines[j])
            j += 1
        while block and not block[-1].strip():
            block.pop()
        if block:
            cut = min(_indent(b) for b in block if b.strip())
            block = [_plain(b[cut:]) for b in block]
            out.extend(["", f"```{lang or _guess_language(block)}", *block, "```", ""])
        return j

    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        directive = re.match(r"\.\. code-block::\s*(\w*)", stripped)
        if directive:
            i = fence(i + 1, _indent(line), directive.group(1) or "text")
            continue
        if stripped.endswith("::"):
            head = line.rstrip()[:-2].rstrip()
            if head.strip():
                out.append(_inline(head) + ":")
            i = fence(i + 1, _indent(line), "")
            in_list = False
            continue
        if not stripped:
            out.append("")
            i += 1
            continue
        item = re.match(r"([-*]|\d+\.) ", stripped)
        prev = next((p for p in reversed(lines[:i]) if p.strip()), None) if i else None
        if item:
            if out and out[-1].strip() and not in_list:
                out.append("")
            in_list = True
        elif in_list and _indent(line) == 0 and (not lines[i - 1].strip()):
            in_list = False
        if (not item and not in_list and prev is not None and lines[i - 1].strip()
                and _indent(line) >= _indent(prev) + 4):
            i = fence(i, _indent(prev), "text")
            continue
        out.append(_inline(line.rstrip()) if not in_list else _inline(stripped if item else "  " + stripped))
        i += 1
    return "\n".join(out).strip() + "\n"


def _guess_language(block: list[str]) -> str:
    """``yaml`` for a literal block that is a YAML mapping (a format example), else ``text``."""
    import yaml

    try:
        return "yaml" if isinstance(yaml.safe_load("\n".join(block)), dict) else "text"
    except yaml.YAMLError:
        return "text"


def module_docstring(path: Path) -> str:
    return ast.get_docstring(ast.parse(path.read_text(), str(path))) or ""


# ---------------------------------------------------------------------------------------------- methods
def _reads_label(method: dict[str, Any]) -> str:
    from orchestrator.cli import READ_LABELS

    if method["kind"] != "post-hoc":
        return {"trains": "trains its own network from scratch",
                "fine-tunes": "fine-tunes the cached cross-entropy classifier"}.get(method["kind"], method["kind"])
    return f"post-hoc, reading {READ_LABELS.get(method['reads'], 'what it does not declare (class attribute reads)')}"


def method_groups() -> list[tuple[str, list[dict[str, Any]]]]:
    """The methods in ``list``'s groups: post-hoc by what they read, then those that train."""
    import methods
    from methods.registry import READS

    catalog = methods.catalog()
    posthoc = [m for m in catalog if m["kind"] == "post-hoc"]
    groups = [(f"Post-hoc: {reads}", [m for m in posthoc if m["reads"] == reads]) for reads in READS]
    groups.append(("Post-hoc: undeclared reads", [m for m in posthoc if m["reads"] not in READS]))
    groups.append(("Training", [m for m in catalog if m["kind"] != "post-hoc"]))
    return [(title, rows) for title, rows in groups if rows]


def knob_table(knobs) -> list[str]:
    rows = ["| knob | type | domain | default | retrains | what it sets |", "|---|---|---|---|---|---|"]
    for k in knobs:
        rows.append(f"| `{k.name}` | {k.kind} | {cell(k.domain())} | `{cell(value(k.default))}` | "
                    f"{'yes' if k.network else 'no'} | {cell(k.help) or '–'} |")
    return rows


def search_space_section(name: str) -> list[str]:
    from orchestrator import search_space

    if name not in search_space.available():
        return ["No bundled search space: pass `--search-space FILE` "
                "([format](../search-spaces.md)), or fix its values in a study."]
    text = search_space.bundled(name).read_text()
    try:
        space = search_space.load(name)
    except search_space.SearchSpaceError as exc:
        return [f"**Invalid:** {cell(exc)}", "", "```yaml", text.rstrip(), "```"]
    objectives = ", ".join(f"{mode} `{metric}`" for metric, mode in space.objectives)
    out = [f"`search_spaces/{name}.yaml`: {objectives}; {space.num_samples} trials, "
           f"{space.max_concurrent} at once by default.", ""]
    if space.knobs:
        out += ["| searched | range |", "|---|---|"]
        for k in space.knobs:
            rng = (f"{value(k.choices)}" if k.type == "categorical" else
                   f"[{k.low}, {k.high}] {k.type}" + (" log" if k.log else f" step {k.step}" if k.step else ""))
            out.append(f"| `{k.name}` | {cell(rng)} |")
        out.append("")
    else:
        out += ["Nothing searched: one configuration.", ""]
    if space.fixed:
        out += ["Fixed: " + ", ".join(f"`{k}: {value(v)}`" for k, v in space.fixed.items()), ""]
    out += ["```yaml", text.rstrip(), "```"]
    return out


def method_page(m: dict[str, Any]) -> str:
    name = m["name"]
    module = ROOT / "methods" / f"{m['module']}.py"
    out = [f"# {name}", "", f"**{cell(m['paper']) or 'no paper declared'}**", "",
           f"- Kind: {_reads_label(m)}.",
           f"- Run it: `python -m orchestrator sweep {name}`",
           f"- Source: `methods/{m['module']}.py`"]
    if m["substitute"]:
        out.append(f"- Substitute: {cell(m['substitute'])}")
    out += ["", "## What it computes", "", rst_to_markdown(module_docstring(module)), "## Knobs", ""]
    if m["error"]:
        out += [f"**Invalid declaration:** {cell(m['error'])}", ""]
    elif m["knobs"]:
        out += knob_table(m["knobs"]) + [""]
    else:
        out += ["No knob of its own.", ""]
    if any(k.kind == "scorer" for k in m["knobs"]):
        out += ["Its scorer knob names any post-hoc method, whose knobs then become knobs of this method too "
                "(searched or fixed in the same search space).", ""]
    out += ["Every method also has the [recipe knobs](index.md#recipe-knobs) (backbone, epochs, lr, ...), which a "
            "benchmark sets and which always retrain.", "", "## Bundled search space", "",
            *search_space_section(name), ""]
    return "\n".join(out)


def methods_index() -> str:
    from orchestrator.recipe import RECIPE

    out = ["# Methods", "",
           "Every registered method, generated from its declaration (`methods/<name>.py`) and its bundled search "
           "space (`search_spaces/<name>.yaml`); `python -m orchestrator list` prints the same. A method added to "
           "`methods/` appears here at the next build. How to add one: "
           "[Adding a method](../../tutorials/adding-a-method.md).", ""]
    for title, rows in method_groups():
        out += [f"## {title}", "", "| method | kind | paper | knobs |", "|---|---|---|---|"]
        for m in rows:
            knobs = ", ".join(f"`{k.name}`" for k in m["knobs"]) or "–"
            paper = cell(m["paper"]) + (" *(substitute)*" if m["substitute"] else "")
            out.append(f"| [{m['name']}]({m['name']}.md) | {cell(_reads_label(m))} | {paper} | {knobs} |")
        out.append("")
    out += ["## Recipe knobs", "",
            "Knobs of every method (`orchestrator/recipe.py`): a benchmark's recipe sets their values, a search "
            "space may search or fix them, and every one retrains the network.", "", *knob_table(RECIPE), ""]
    return "\n".join(out)


def methods_by_reads_table() -> str:
    """Post-hoc methods grouped by what they read (replaces :data:`METHODS_BY_READS_MARKER`)."""
    from orchestrator.cli import READ_LABELS

    rows = ["| reads | methods |", "|---|---|"]
    for _title, group in method_groups():
        if group and group[0]["kind"] == "post-hoc":
            label = READ_LABELS.get(group[0]["reads"], "undeclared")
            names = ", ".join(f"[{m['name']}](../reference/methods/{m['name']}.md)" for m in group)
            rows.append(f"| {cell(label)} | {names} |")
    return "\n".join(rows)


# ---------------------------------------------------------------------------------------------- benchmarks
def benchmarks_page() -> str:
    from orchestrator.data import BENCHMARKS
    from orchestrator.models import BACKBONES

    entries = BENCHMARKS.entries()
    out = ["# Benchmarks", "",
           "Every registered benchmark (`--benchmark NAME`), generated from the registry "
           "(`@BENCHMARKS.register` in `orchestrator/data/`). A benchmark of your own is a YAML file: "
           "[Custom benchmarks](../how-to/custom-benchmark.md).", "",
           "| name | what it is | module |", "|---|---|---|"]
    for name, entry in entries.items():
        out.append(f"| `{name}` | {cell(entry.info.get('description', ''))} | `{entry.module}` |")
    out.append("")
    for module in sorted({e.module for e in entries.values()}):
        names = ", ".join(f"`{n}`" for n, e in entries.items() if e.module == module)
        path = ROOT / Path(*module.split(".")).with_suffix(".py")
        out += [f"## {names}", "", rst_to_markdown(module_docstring(path))]
    out += ["## Backbones", "", "The recipe knob `backbone` names one of these encoders (`@BACKBONES.register` in "
            "`orchestrator/models/`):", "", "| backbone | what it is |", "|---|---|"]
    for name, entry in BACKBONES.entries().items():
        out.append(f"| `{name}` | {cell(entry.info.get('description', ''))} |")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------- CLI
def subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, help, parser) of every subcommand, in the order they were added."""
    # argparse has no public way to enumerate a parser's actions or its subcommands' help: _actions and
    # _choices_actions are the attributes its own help formatter reads.
    out = []
    for action in parser._actions:
        if isinstance(action.choices, dict) and action.nargs == argparse.PARSER:
            helps = {a.dest: a.help or "" for a in getattr(action, "_choices_actions", [])}
            out += [(name, helps.get(name, ""), sub) for name, sub in action.choices.items()]
    return out


def _help(action: argparse.Action, prog: str) -> str:
    text = action.help or ""
    try:
        return text % {**vars(action), "prog": prog}
    except (KeyError, TypeError, ValueError):
        return text.replace("%%", "%")


def options_table(parser: argparse.ArgumentParser) -> list[str]:
    rows = ["| argument | value | default | what it does |", "|---|---|---|---|"]
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or action.dest == "help":
            continue
        if action.option_strings:
            names = ", ".join(f"`{o}`" for o in action.option_strings)
            takes = action.nargs != 0
        else:
            names, takes = f"`{action.metavar or action.dest}`", True
        if action.choices and not isinstance(action.choices, dict):
            arg = " \\| ".join(f"`{c}`" for c in action.choices)
        elif takes and action.option_strings:
            arg = f"`{action.metavar or action.dest.upper()}`"
        else:
            arg = ""
        if action.type is not None and takes and not action.choices:
            arg += f" ({getattr(action.type, '__name__', action.type)})"
        if isinstance(action, argparse._AppendAction):
            arg += ", repeatable"
        default = "" if action.default is None or action.default is False or action.default == argparse.SUPPRESS \
            or not action.option_strings else f"`{value(action.default)}`"
        required = " (required)" if action.required and action.option_strings else ""
        rows.append(f"| {names}{required} | {arg} | {default} | {cell(_help(action, parser.prog))} |")
    return rows


def usage(parser: argparse.ArgumentParser) -> str:
    """argparse's usage text, wrapped at 88 columns (a code block's width) whatever the terminal."""
    import os

    before = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "88"
    try:
        text = parser.format_usage().rstrip()
    finally:
        if before is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = before
    return text


def cli_page() -> str:
    from orchestrator.cli import build_parser

    parser = build_parser()
    subs = subcommands(parser)
    out = ["# Command line", "",
           f"`{parser.prog} COMMAND ...`, also installed as `oodsweep COMMAND ...`. Generated from the argparse "
           "parser (`orchestrator.cli.build_parser()`); `--help` after any command prints the same.", "",
           "| command | what it does |", "|---|---|"]
    out += [f"| [`{name}`](#{name}) | {cell(help_)} |" for name, help_, _ in subs]
    out.append("")
    for name, help_, sub in subs:
        options = options_table(sub)
        out += [f"## {name}", "", cell(sub.description or help_), "", "```text", usage(sub), "```", "",
                *(options if len(options) > 2 else ["No options."]), ""]
    out += ["Exit codes of every command: [How a run ends](../explanation/exits.md).", ""]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------- formats
def search_spaces_page() -> str:
    from orchestrator import search_space

    path = ROOT / "orchestrator" / "search_space.py"
    out = ["# Search spaces", "",
           "A search space is a YAML file: the bundled `search_spaces/<method>.yaml` of each method, or your own "
           "with `--search-space FILE` (or `search_space:` in a study). Generated from "
           "`orchestrator/search_space.py`, which reads and checks it.", "", "## Format", "",
           rst_to_markdown(module_docstring(path)),
           "## Objectives", "",
           "What trials report on the validation sets, the only metrics a sweep may optimise "
           "(test metrics are reported, never optimised on):", "",
           *(f"- `{m}`" for m in search_space.OBJECTIVES), "",
           "## Bundled search spaces", "", "| method | objective | trials | searched |", "|---|---|---|---|"]
    for name in search_space.available():
        try:
            s = search_space.load(name)
        except search_space.SearchSpaceError as exc:
            out.append(f"| [{name}](methods/{name}.md) | invalid: {cell(exc)} | | |")
            continue
        objectives = ", ".join(f"{mode} `{metric}`" for metric, mode in s.objectives)
        searched = ", ".join(f"`{k.name}`" for k in s.knobs) or "–"
        link = f"[{name}](methods/{name}.md)" if name in _methods() else name
        out.append(f"| {link} | {objectives} | {s.num_samples} | {searched} |")
    return "\n".join(out) + "\n"


def _methods() -> set[str]:
    import methods

    return set(methods.available())


def studies_page() -> str:
    from orchestrator.benchmark.plan import ENTRY_KEYS, STUDY_KEYS

    path = ROOT / "orchestrator" / "benchmark" / "plan.py"
    out = ["# Studies", "",
           "A study file (`python -m orchestrator benchmark STUDY.yaml`) is entries × benchmarks × seeds. Generated "
           "from `orchestrator/benchmark/plan.py`, which reads and checks it; a walk-through: "
           "[Comparing methods with a study](../tutorials/study.md).", "", "## Format", "",
           rst_to_markdown(module_docstring(path)), "## Study keys", "", "| key | meaning |", "|---|---|"]
    out += [f"| `{k}` | {cell(STUDY_KEY_HELP.get(k, 'see orchestrator/benchmark/plan.py'))} |"
            for k in sorted(STUDY_KEYS)]
    out += ["", "## Entry keys", "", "| key | meaning |", "|---|---|"]
    out += [f"| `{k}` | {cell(ENTRY_KEY_HELP.get(k, 'see orchestrator/benchmark/plan.py'))} |"
            for k in sorted(ENTRY_KEYS)]
    return "\n".join(out) + "\n"


def reference_index() -> str:
    import methods
    from orchestrator.data import BENCHMARKS

    return "\n".join([
        "# Reference", "",
        "Generated at every build from the code's declarations; nothing here is edited by hand.", "",
        "- [Command line](cli.md): every command and option.",
        f"- [Methods](methods/index.md): {len(methods.available())} methods, their papers, what they read, their "
        "knobs and their bundled search spaces.",
        f"- [Benchmarks](benchmarks.md): {len(BENCHMARKS.names())} registered benchmarks and the backbones.",
        "- [Search spaces](search-spaces.md): the search-space format and every bundled file.",
        "- [Studies](studies.md): the study format.", ""])


def reference_pages() -> dict[str, str]:
    """Every generated page: its path under docs/ → its Markdown."""
    import methods

    pages = {"reference/index.md": reference_index(), "reference/cli.md": cli_page(),
             METHODS_INDEX: methods_index(), "reference/benchmarks.md": benchmarks_page(),
             "reference/search-spaces.md": search_spaces_page(), "reference/studies.md": studies_page()}
    for m in methods.catalog():
        pages[f"reference/methods/{m['name']}.md"] = method_page(m)
    return pages


def methods_nav() -> list[Any]:
    """The nav under the Methods entry: the overview, then one page per method in ``list``'s groups."""
    nav: list[Any] = [{"Overview": METHODS_INDEX}]
    for title, rows in method_groups():
        nav.append({title: [{m["name"]: f"reference/methods/{m['name']}.md"} for m in rows]})
    return nav


# ---------------------------------------------------------------------------------------------- MkDocs events
def _expand(nav: Any) -> Any:
    if isinstance(nav, list):
        return [_expand(item) for item in nav]
    if isinstance(nav, dict):
        return {k: (methods_nav() if v == METHODS_INDEX else _expand(v)) for k, v in nav.items()}
    return nav


def on_config(config, **kwargs):
    config["nav"] = _expand(config["nav"])
    return config


def on_files(files, config, **kwargs):
    from mkdocs.structure.files import File

    for path, text in reference_pages().items():
        files.append(File.generated(config, path, content=text))
    for src in sorted((ROOT / RESULTS_SRC).rglob("*")):
        if src.is_file() and src.suffix in (".md", ".png", ".csv"):
            dest = f"{RESULTS_DST}/{src.relative_to(ROOT / RESULTS_SRC).as_posix()}"
            files.append(File.generated(config, dest, abs_src_path=str(src)))
    return files


def expand_markers(markdown: str) -> str:
    """A hand-written page with its markers replaced (:data:`METHODS_BY_READS_MARKER`, :data:`DOCSTRING_MARKER`)."""
    if METHODS_BY_READS_MARKER in markdown:
        markdown = markdown.replace(METHODS_BY_READS_MARKER, methods_by_reads_table())
    return DOCSTRING_MARKER.sub(lambda m: rst_to_markdown(module_docstring(ROOT / m.group(1))), markdown)


def on_page_markdown(markdown, page, config, files, **kwargs):
    return expand_markers(markdown)
