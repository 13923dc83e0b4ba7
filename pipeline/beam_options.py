"""The calculation's options as a Beam ``PipelineOptions`` subclass, and the check of the
Beam options a command line gives.

Registering them lets Beam accept them next to its own (``--runner``, ``--flink_master``, …)
and hand them to runners that ship options to workers; they are declared once, in
``pipeline.options.add_arguments``. ``check_beam_args`` refuses what neither the command nor
Beam knows: Beam itself only logs "Discarding unparseable args" and runs on.
"""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Iterable, Sequence

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipeline import cli
from pipeline.options import add_arguments

#: Set to ``core`` by a run before Beam stages anything: the sdist that ``--setup_file``
#: builds for the workers (``setup.py``) then holds the core alone, not the tools.
PACKAGE_ENV = "EMISSIONS_PACKAGE"


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
    parsed, unknown = parser.parse_known_args(list(args))
    if unknown:
        cli.refuse(cli.unknown_message(unknown, [*known, *cli.option_strings(parser)]))
    if parsed.runner is not None:
        check_runner(str(parsed.runner))


def check_runner(name: str) -> None:
    """Refuses a ``--runner`` that is not one of Beam's runners by its name as Beam lists it
    (``StandardOptions.KNOWN_RUNNER_NAMES``; ``direct`` too): Beam would take ``flink`` or a
    class path, but the run decides by the name whether the job runs in this process."""
    names = [*StandardOptions.KNOWN_RUNNER_NAMES, "direct"]
    if name in names:
        return
    lowered = {n.lower(): n for n in names}
    close = [lowered[n] for n in lowered if n.startswith(name.lower())][:1]
    close = close or [
        lowered[n] for n in difflib.get_close_matches(name.lower(), list(lowered), n=1)
    ]
    cli.refuse(
        f"--runner: expected one of {', '.join(StandardOptions.KNOWN_RUNNER_NAMES)}, got "
        f"{name!r}" + (f" (did you mean {close[0]}?)" if close else "")
    )
