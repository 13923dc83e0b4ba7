"""The calculation's options as a Beam ``PipelineOptions`` subclass, and the check of the
Beam options a command line gives.

Registering them lets Beam accept them next to its own (``--runner``, ``--flink_master``, …)
and hand them to runners that ship options to workers; they are declared once, in
``pipeline.options.add_arguments``. ``check_beam_args`` refuses what neither the command nor
Beam knows: Beam itself only logs "Discarding unparseable args" and runs on.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence

from apache_beam.options.pipeline_options import PipelineOptions

from pipeline import cli
from pipeline.options import add_arguments


class EmissionsOptions(PipelineOptions):
    """Options of the emissions calculation (Beam's own options are accepted alongside)."""

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        add_arguments(parser)


def beam_parser() -> argparse.ArgumentParser:
    """Beam's own parser, with every option that a ``PipelineOptions`` subclass registers
    (Beam's standard, runner and worker options, and ``EmissionsOptions``), as Beam makes it
    to read a command line (``get_all_options``'s ``add_extra_args_fn`` hands it over)."""
    made: list[argparse.ArgumentParser] = []
    PipelineOptions([]).get_all_options(add_extra_args_fn=made.append)
    return made[0]


def check_beam_args(args: Sequence[str], known: Iterable[str] = ()) -> None:
    """Refuses (``cli.refuse``: one line, exit 2) an argument that no registered Beam option
    takes, naming the closest spelling among Beam's and ``known`` (the command's own), and a
    Beam option whose value Beam's parser cannot use."""
    parser = beam_parser()
    # A prefix of an option is a typo, not a spelling, even of Beam's (which Beam alone would
    # take: the run reads --runner and --direct_num_workers itself, spelled out).
    parser.allow_abbrev = False
    parser.error = lambda message: cli.refuse(cli.readable(message))  # type: ignore[method-assign]
    _, unknown = parser.parse_known_args(list(args))
    if unknown:
        cli.refuse(cli.unknown_message(unknown, [*known, *cli.option_strings(parser)]))
