"""The docs agree with the code: every `pgrag ...` command they show exists with the options
they give it, and the configuration table lists every setting with its default.

Commands are read from the README and docs/*.md, so a new line there is checked too: every
line of sh/bash/shell/console code blocks, `$ ` lines of other code blocks, and inline code
that starts with `pgrag `.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import MISSING, fields

import click
import pytest
from click.testing import CliRunner

from pgrag.cli import main
from pgrag.runtime.settings import Settings
from tests.conftest import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_BLOCKS = {"sh", "bash", "shell", "console"}
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
PLACEHOLDER = re.compile(r"^[A-Z][A-Z_]*$")  # COMMAND, ID, NAME


def shell_words(text: str) -> list[str]:
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    return list(lexer)


def pgrag_argvs(command_line: str) -> list[list[str]]:
    """The arguments of each `pgrag` in a shell command line, up to a pipe, redirection or
    the end of the command."""
    words = shell_words(command_line)
    argvs = []
    for i, word in enumerate(words):
        if word == "pgrag":
            argv = []
            for arg in words[i + 1 :]:
                if arg and all(c in "|&;<>()" for c in arg):
                    break
                argv.append(arg)
            argvs.append(argv)
    return argvs


def shell_commands(block: str, start: int, prompt_only: bool) -> list[tuple[int, str]]:
    """(line number, command) of a code block, a command running on while a quote is open
    or a line ends with a backslash."""
    out: list[tuple[int, str]] = []
    pending, first = "", 0
    for n, line in enumerate(block.splitlines(), start):
        if not pending:
            if prompt_only and not line.startswith("$ "):
                continue
            line, first = line.removeprefix("$ "), n
        pending = f"{pending}\n{line}" if pending else line
        if pending.endswith("\\"):
            pending = pending[:-1]
            continue
        try:
            shell_words(pending)
        except ValueError:  # an open quote: the command goes on
            continue
        out.append((first, pending))
        pending = ""
    return out


def doc_commands() -> list[tuple[str, list[str]]]:
    """(doc:line, arguments after `pgrag`) of every pgrag command the docs show."""
    found = []
    for path in DOCS:
        text = path.read_text()
        for block in FENCE.finditer(text):
            language, body = block.groups()
            first_line = text.count("\n", 0, block.start(2)) + 1
            lines = shell_commands(body, first_line, prompt_only=language not in SHELL_BLOCKS)
            for n, line in lines:
                found += [(f"{path.name}:{n}", argv) for argv in pgrag_argvs(line)]
        prose = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
        for span in re.finditer(r"`(pgrag\s[^`]+)`", prose):
            n = prose.count("\n", 0, span.start()) + 1
            found += [(f"{path.name}:{n}", argv) for argv in pgrag_argvs(span.group(1))]
    return found


COMMANDS = doc_commands()


def test_the_docs_show_commands() -> None:
    shown = {argv[0] for _, argv in COMMANDS if argv}
    assert {"up", "ingest", "jobs", "search", "ask", "sql", "keys", "collections"} <= shown


def command_path(argv: list[str]) -> tuple[list[str], click.Command]:
    """The subcommand names at the start of `argv` and the command they lead to; a
    placeholder where a subcommand would be (`pgrag COMMAND --help`) ends the path."""
    path: list[str] = []
    command: click.Command = main
    for word in argv:
        if not isinstance(command, click.Group) or word.startswith("-"):
            break
        if word not in command.commands:
            assert PLACEHOLDER.match(word), f"no command {' '.join([*path, word])!r}"
            break
        path.append(word)
        command = command.commands[word]
    return path, command


@pytest.mark.parametrize(("where", "argv"), COMMANDS, ids=[w for w, _ in COMMANDS])
def test_doc_command_exists_with_its_options(where: str, argv: list[str]) -> None:
    path, command = command_path(argv)
    shown = CliRunner().invoke(main, [*path, "--help"])
    assert shown.exit_code == 0, shown.output
    assert shown.output.startswith("Usage: ")
    if command.context_settings.get("ignore_unknown_options"):
        return  # its other options go elsewhere (`pgrag sql`'s to psql)
    known = {opt for p in command.params for opt in [*p.opts, *p.secondary_opts]}
    known |= {"-h", "--help"}
    given = {w.split("=")[0] for w in argv[len(path) :] if re.match(r"^--?[A-Za-z]", w)}
    assert given <= known, f"{where}: no option {sorted(given - known)} of pgrag {path}"


# ---------------------------------------------------------------------------- configuration


def configuration_rows() -> list[tuple[list[str], list[str]]]:
    """(variables, their defaults) of each row of the README's configuration table."""
    text = (ROOT / "README.md").read_text()
    table = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in table.splitlines():
        if line.startswith("| `PGRAG_"):
            names_cell, default_cell = line.split("|")[1:3]
            names = re.findall(r"`(PGRAG_[A-Z0-9_]+)`", names_cell)
            rows.append((names, [d.strip().strip("`") for d in default_cell.split(" / ")]))
    return rows


def test_every_setting_is_in_the_configuration_table_with_its_default() -> None:
    settings = {f"PGRAG_{f.name.upper()}": f for f in fields(Settings)}
    rows = configuration_rows()
    documented = [name for names, _ in rows for name in names]
    assert sorted(documented) == sorted(settings)
    for names, defaults in rows:
        if len(defaults) != len(names):
            continue  # one default said for several variables
        for name, shown in zip(names, defaults, strict=True):
            default = settings[name].default
            assert default is not MISSING
            if default == "":
                continue  # an empty default is described in words (embedded, auto, empty)
            if isinstance(default, int | float):
                assert float(shown) == default, f"{name}: {shown} in the README, {default}"
            else:
                assert shown == str(default), f"{name}: {shown} in the README, {default}"
