"""The `dicomlake` command: `serve` and `worker` run the service; the other subcommands mirror
`gcloud healthcare` and `bq`, talking to a running server over HTTP."""

from __future__ import annotations

import click

from dicomlake import __version__
from dicomlake.cli import bq, healthcare
from dicomlake.cli.server import serve, worker


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dicomlake")
def main() -> None:
    """A self-hosted DICOM store that speaks DICOMweb and the Cloud Healthcare API v1."""


main.add_command(serve)
main.add_command(worker)
healthcare.register(main)
bq.register(main)
