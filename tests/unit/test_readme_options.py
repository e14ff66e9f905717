"""The README's options table and the command-line parser describe the same options: every
option the table names is one the parser takes, and every option the parser takes (hidden
aliases aside) has a row."""

import argparse
import re
from pathlib import Path

from fastvfs import cli

README = Path(__file__).resolve().parents[2] / "README.md"


def table_options():
    """Option strings named in the first column of the options table (rows "| `--x ...` |")."""
    names = set()
    for line in README.read_text().splitlines():
        if not line.startswith("| `-"):
            continue
        first = line.split(" | ")[0]
        for code in re.findall(r"`([^`]+)`", first):
            for word in re.split(r"[ =,]", code):
                if word.startswith("-"):
                    names.add(word)
    return names


def parser_options():
    names = set()
    for action in cli.parser()._actions:
        if action.help == argparse.SUPPRESS:
            continue
        names.update(action.option_strings)
    return names


def test_every_option_in_the_table_is_parsed():
    unknown = table_options() - parser_options()
    assert not unknown, f"README names options the parser does not take: {sorted(unknown)}"


def test_every_parser_option_has_a_row():
    missing = parser_options() - table_options() - {"-h", "--help"}
    assert not missing, f"options missing from the README's table: {sorted(missing)}"


def test_the_table_is_found():
    assert {"--shared-dir", "--cache", "--sandbox"} <= table_options()
