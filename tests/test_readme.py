"""The README's command reference and the commands themselves name the same flags.

The option reference of each command is its `--help`; the README's tables and text must not name a flag
that no command has, nor leave out one that a command has.
"""

from __future__ import annotations

import re
from pathlib import Path

import click

from c3d_extract.cli import extract, svm, weights

README = Path(__file__).resolve().parents[1] / "README.md"


def _commands():
    """Every click command of the three console scripts, subcommands included, with its full name."""
    todo = [("c3d-extract", extract.main), ("c3d-svm", svm.main), ("c3d-weights", weights.main)]
    while todo:
        name, command = todo.pop()
        yield name, command
        if isinstance(command, click.Group):
            todo += [(f"{name} {sub}", cmd) for sub, cmd in command.commands.items()]


def _flags() -> dict[str, set[str]]:
    """Each long flag (`--x`, and its `--no-x` form) -> the commands that take it."""
    flags: dict[str, set[str]] = {}
    for name, command in _commands():
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden:
                for flag in param.opts + param.secondary_opts:
                    if flag.startswith("--"):
                        flags.setdefault(flag, set()).add(name)
    return flags


def test_every_flag_of_every_command_is_in_the_readme():
    text = README.read_text()
    missing = sorted(flag for flag in _flags() if flag != "--help"
                     and not re.search(re.escape(flag) + r"(?![\w-])", text))
    assert not missing, f"flags the commands take that README.md does not mention: {missing}"


def test_the_readme_names_no_flag_that_no_command_takes():
    known = set(_flags())
    # the test command's own flags, pip's, and other tools' that the README quotes
    others = {"--help", "--version", "--durations", "--timeout"}
    named = set()
    for line in README.read_text().splitlines():
        if line.startswith("| `--") or "c3d-extract" in line or "c3d-svm" in line or "c3d-weights" in line:
            named.update(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", line))
    unknown = sorted(named - known - others)
    assert not unknown, f"README.md names flags no command takes: {unknown}"
