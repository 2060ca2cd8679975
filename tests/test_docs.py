"""README.md and docs/*.md hold together: every relative link and ``#anchor`` resolves, and every
``dcac`` command they show parses with ``dcac``'s own parser, its overrides naming real config keys."""
from __future__ import annotations

import argparse
import contextlib
import functools
import glob
import io
import os
import re
import shlex
from typing import Dict, Iterator, List, Tuple

import pytest

from dcac_cli import build_parser
from dcac_cli.overrides import OVERRIDES_DEST, split_listed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
DOCS = sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
PAGES = [README] + DOCS

FENCE = re.compile(r"^(`{3,})([^`\n]*)\n(.*?)^\1[ \t]*$", re.MULTILINE | re.DOTALL)
# Fenced blocks whose lines are shell commands; output and log blocks are marked ```text.
SHELL_LANGUAGES = ("", "bash", "sh", "shell", "console")
INLINE_CODE = re.compile(r"(`+)(.+?)\1", re.DOTALL)
LINK = re.compile(r"!?\[((?:[^\[\]]|\[[^\[\]]*\])*)\]\(\s*<?([^()\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$")


def rel(path: str) -> str:
    return os.path.relpath(path, ROOT)


def read(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def without_fences(text: str) -> str:
    """The text with every fenced code block blanked (its lines kept, so line counts stay)."""
    return FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)


# --------------------------------------------------------------------------- (a) links and anchors

def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its text without markup, lower case, every character
    other than a letter, digit, underscore, hyphen or space removed, spaces turned into hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: str) -> set:
    """The anchors of ``path``'s headings (outside code blocks), duplicates numbered -1, -2, ..."""
    seen: Dict[str, int] = {}
    found = set()
    for line in without_fences(read(path)).splitlines():
        match = HEADING.match(line)
        if not match:
            continue
        slug = github_slug(match.group(2))
        if slug in seen:
            seen[slug] += 1
            slug = f"{slug}-{seen[slug]}"
        else:
            seen[slug] = 0
        found.add(slug)
    return found


def links(path: str) -> Iterator[Tuple[int, str]]:
    """``(line, target)`` of every Markdown link in ``path`` outside code (blocks and spans)."""
    text = without_fences(read(path))
    text = INLINE_CODE.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)  # spans blanked, lines kept
    for match in LINK.finditer(text):
        yield text.count("\n", 0, match.start()) + 1, match.group(2)


def broken_links(path: str) -> List[str]:
    broken = []
    for line, target in links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, flags=re.IGNORECASE):  # https:, mailto:: not checked
            continue
        file_part, _, anchor = target.partition("#")
        where = os.path.normpath(os.path.join(os.path.dirname(path), file_part)) if file_part else path
        if not os.path.exists(where):
            broken.append(f"{rel(path)}:{line}: {target}: no such file")
        elif anchor and not where.endswith(".md"):
            broken.append(f"{rel(path)}:{line}: {target}: an anchor into a file that is no Markdown page")
        elif anchor and anchor not in anchors(where):
            broken.append(f"{rel(path)}:{line}: {target}: no heading #{anchor} in {file_part or 'this page'}")
    return broken


def test_the_docs_pages_exist_and_the_readme_links_every_one():
    assert DOCS, "no docs/*.md"
    linked = {os.path.normpath(os.path.join(ROOT, target.partition("#")[0])) for _, target in links(README)}
    assert [rel(page) for page in DOCS if page not in linked] == []


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_every_relative_link_and_anchor_resolves(page):
    assert list(links(page)), f"{rel(page)} links nowhere"
    assert broken_links(page) == []


def test_the_link_check_finds_broken_ones(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A page\n\n## Its `key`: more, and less\n\n## Twice\n\n## Twice\n")
    page = tmp_path / "README.md"
    page.write_text("# Title\n\n[ok](docs/a.md#its-key-more-and-less) [ok](docs/a.md#twice-1) [ok](#title)\n"
                    "[no](docs/b.md) [no](docs/a.md#twice-2) [no](#nowhere) [web](https://example.org/x#y)\n"
                    "`[code](docs/c.md)`\n\n```bash\n[block](docs/d.md)\n```\n")
    assert [line.split(": ", 1)[1] for line in broken_links(str(page))] == [
        "docs/b.md: no such file", "docs/a.md#twice-2: no heading #twice-2 in docs/a.md",
        "#nowhere: no heading #nowhere in this page"]


# --------------------------------------------------------------------------- (b) the commands shown

# Code spans that start with "dcac " but show no command line: names that dcac prints.
NOT_COMMANDS = {
    # row labels of `dcac experiments`' results.md (engine and what differs from the paper's defaults)
    "dcac finetune=frozen",
    "dcac model=osnet_ain_x1_0",
    # the start of an error message, quoted in docs/errors.md
    "dcac visualize gradcam needs a CLIP ViT Re-ID model (model.name clip_vit_b16 or clip_vit_tiny: ViT tokens, "
    "BNNeck and ID classifier); this run trained osnet_x0_25 with engine softmax.",
}

# Placeholders of the synopses and elided commands, each replaced by a value of the kind it stands
# for, so the rest of the line is still parsed: (pattern, replacement), in this order.
PLACEHOLDERS = [
    (r"KEY VALUE \.\.\.", "train.max_epoch 2"),  # KEY VALUE overrides, any number of pairs
    (r"--config-file (?:\.\.\.|F)(?=\s|$)", "--config-file single/dcac_market1501_to_msmt17"),
    (r"(?<=--num-classes )N\b", "751"),
    (r"(?<=dcac\.finetune )MODE\b", "lora"),
    (r"(?<=--json-out )FILE\b", "bench.json"),
    (r"\bAMP(?=:)", "fp16"),  # --settings AMP:cache
    (r"(?<=model\.load_weights )X\b", "log/m2ms"),
    (r"(?<=^dcac configs )FILTER$", "msmt17"),
    (r" \.\.\.(?=\s|$)", ""),  # "--settings fp16:cache fp16:encode ...": more words like the ones before
]
# An optional group of a synopsis: "[--flag VALUE]", "[KEY VALUE ...]", "[FILTER]" (never a quoted
# list value such as "['cuhk03_np']").
OPTIONAL = re.compile(r"(?<![^\s])\[(?=[-A-Z])([^\[\]]*)\]")


def expand_synopsis(command: str) -> List[str]:
    """A synopsis (``[--flag VALUE]`` optional groups, ``a|b`` alternatives) as command lines:
    the one without any optional group, and those with every group, one per alternative."""
    if not OPTIONAL.search(command) and "|" not in command:
        return [command]
    bare = " ".join(OPTIONAL.sub("", command).split())
    words = OPTIONAL.sub(r"\1", command).split()
    widest = max(len(word.split("|")) for word in words)
    return [bare] + [" ".join(word.split("|")[min(i, len(word.split("|")) - 1)] for word in words)
                     for i in range(widest)]


def fill_placeholders(command: str) -> str:
    for pattern, value in PLACEHOLDERS:
        command = re.sub(pattern, value, command)
    return command


def shown_commands(path: str) -> Iterator[Tuple[str, str, bool]]:
    """``(where, command, in_prose)``: every ``dcac`` command line a page shows, in a shell code block (a
    ``\\`` continuation joined; ``torchrun ... -m dcac_plugin.cli ...`` and ``python scripts/main.py
    ...``, which run the same parser, as ``dcac ...`` and ``dcac train ...``) or in a code span
    starting with ``dcac``."""
    text = read(path)
    for block in FENCE.finditer(text):
        if block.group(2).strip().lower() not in SHELL_LANGUAGES:
            continue
        lineno, start, pending = text.count("\n", 0, block.start()) + 2, 0, ""
        for line in block.group(3).splitlines():
            if not pending:
                start = lineno
            lineno += 1
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            line, pending = " ".join((pending + line).split()), ""
            module = re.match(r"torchrun\b.*?-m dcac_plugin\.cli (.*)$", line)
            if module:
                line = "dcac " + module.group(1)
            script = re.match(r"python scripts/main\.py (.*)$", line)
            if script:  # upstream's launcher flags, run as dcac train (scripts/main.py)
                line = "dcac train " + script.group(1)
            if line.startswith("dcac "):
                yield f"{rel(path)}:{start}", line, False
    prose = without_fences(text)
    for span in INLINE_CODE.finditer(prose):
        code = " ".join(span.group(2).split())
        if code.startswith("dcac "):
            yield f"{rel(path)}:{prose.count(chr(10), 0, span.start()) + 1}", code, True


def subcommands(parser: argparse.ArgumentParser) -> Dict[str, argparse.ArgumentParser]:
    actions = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    return dict(actions[0].choices) if actions else {}


def names_a_command(words: List[str]) -> bool:
    """Whether ``words`` are a command's name alone (``extract``, ``bench train``), as prose names it."""
    parser = build_parser()
    for word in words:
        parser = subcommands(parser).get(word)
        if parser is None:
            return False
    return True


@functools.lru_cache(maxsize=None)
def config_keys() -> frozenset:
    from dcac_config.defaults import get_default_config

    def walk(node, prefix=""):
        for key, value in node.items():
            if isinstance(value, dict):
                yield from walk(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}"
    return frozenset(walk(get_default_config()))


def parse_problem(command: str, in_prose: bool = False) -> str:
    """Why ``command`` (``dcac ...``) does not parse as shown, or ''. In prose, a command's name
    alone (`dcac extract`) names the command and is no command line."""
    words = shlex.split(command, comments=True)[1:]
    if not words:
        return "no command after dcac"
    out, err = io.StringIO(), io.StringIO()
    help_line = "--help" in words or "-h" in words
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            args = build_parser().parse_args(words)
    except SystemExit as exit_:
        if help_line and exit_.code == 0:
            return ""  # the help of a command that exists
        if in_prose and not help_line and names_a_command(words):
            return ""  # prose naming a command (`dcac extract`), no command line
        said = [line for line in err.getvalue().splitlines() if "error:" in line] or err.getvalue().splitlines()[-1:]
        return f"exit status {exit_.code}: {' '.join(said).strip()}"
    if help_line:
        return "--help did not print the help"
    overrides = list(getattr(args, OVERRIDES_DEST, None) or [])
    if args.command == "experiments":  # its positional words run on into the overrides, split by the same rule
        overrides = split_listed(args.lists_or_configs)[1] + overrides
    if len(overrides) % 2:
        return f"KEY VALUE overrides with a key without a value: {overrides}"
    unknown = [key for key in overrides[::2] if key not in config_keys()]
    return f"overrides of no config key: {unknown}" if unknown else ""


def command_lines(command: str) -> List[str]:
    """The concrete command lines a shown command stands for (synopses expanded, placeholders filled)."""
    if command.startswith("dcac <command> "):
        return [command.replace("<command>", name) for name in subcommands(build_parser())]
    return [fill_placeholders(line) for line in expand_synopsis(command)]


def all_shown() -> List[Tuple[str, str, bool]]:
    return [shown for page in PAGES for shown in shown_commands(page)]


def test_the_pages_show_commands_and_the_readme_the_quick_start_and_the_demo():
    readme = [command for _, command, _ in shown_commands(README)]
    assert "dcac demo" in readme
    assert any(command.startswith("dcac train --config-file single/") for command in readme)
    assert len(all_shown()) > 100


def test_every_shown_dcac_command_parses():
    problems = []
    for where, command, in_prose in all_shown():
        if in_prose and command in NOT_COMMANDS:
            continue
        for line in command_lines(command):
            problem = parse_problem(line, in_prose)
            if problem:
                problems.append(f"{where}: {line!r}: {problem}")
    assert problems == []


def test_what_is_not_a_command_is_still_shown():
    """NOT_COMMANDS names only spans the pages show (so it cannot hide a command that changed)."""
    shown = {command for _, command, in_prose in all_shown() if in_prose}
    assert sorted(NOT_COMMANDS - shown) == []


@pytest.mark.parametrize("command", [
    "dcac train --config-fille single/dcac_market1501_to_msmt17",  # a misspelt flag
    "dcac trian --config-file single/dcac_market1501_to_msmt17",  # a misspelt command
    "dcac demo --engines baseline dcac train.max_epoch",  # a key without its value
    "dcac demo --engines baseline dcac trian.max_epoch 2",  # no such config key
    "dcac bench train --amp fp8",  # a value the flag does not take
    "dcac stats [--config-file F] [--num-clases N]",  # a synopsis with a misspelt flag
    "dcac trian --help",  # the help of no command
    "dcac experiments --out log/x table2 train.max_epoch",  # experiments' overrides too
    "dcac extract --flip",  # a command's name with arguments is a command line: extract needs its run
])
@pytest.mark.parametrize("in_prose", [False, True], ids=["block", "prose"])
def test_a_command_that_does_not_parse_is_found(command, in_prose):
    assert any(parse_problem(line, in_prose) for line in command_lines(command)), command


def test_a_commands_name_alone_is_prose_and_its_help_parses():
    assert parse_problem("dcac extract", in_prose=True) == "" and parse_problem("dcac bench train") == ""
    assert parse_problem("dcac extract") != ""  # in a code block, a command line that lacks its arguments
    assert parse_problem("dcac visualize gradcam", in_prose=True) == ""
    assert parse_problem("dcac visualize gradcm", in_prose=True) != ""
    assert parse_problem("dcac extract --help") == ""


def test_synopses_and_placeholders_expand_to_command_lines():
    assert command_lines("dcac stats [--config-file F] [--num-classes N] [--amp fp16|bf16|off] [KEY VALUE ...]") == [
        "dcac stats",
        "dcac stats --config-file single/dcac_market1501_to_msmt17 --num-classes 751 --amp fp16 train.max_epoch 2",
        "dcac stats --config-file single/dcac_market1501_to_msmt17 --num-classes 751 --amp bf16 train.max_epoch 2",
        "dcac stats --config-file single/dcac_market1501_to_msmt17 --num-classes 751 --amp off train.max_epoch 2"]
    assert command_lines("dcac <command> --help")[:2] == ["dcac train --help", "dcac config --help"]
    assert command_lines("dcac configs [FILTER]") == ["dcac configs", "dcac configs msmt17"]
    assert command_lines("dcac bench train [--settings AMP:cache|AMP:encode ...] [--json-out FILE]") == [
        "dcac bench train", "dcac bench train --settings fp16:cache --json-out bench.json",
        "dcac bench train --settings fp16:encode --json-out bench.json"]
    assert command_lines("dcac train --config-file ... data.targets \"['viper']\"") == [
        "dcac train --config-file single/dcac_market1501_to_msmt17 data.targets \"['viper']\""]
