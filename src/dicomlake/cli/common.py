"""What every `dicomlake` subcommand shares."""

from __future__ import annotations

import sys
from typing import NoReturn

import click


def fail(message: str) -> NoReturn:
    """Usage and input errors: one readable line on stderr, exit code 2."""
    click.echo(f"dicomlake: error: {message}", err=True)
    sys.exit(2)
