"""The ``emissions`` command: ``emissions SUBCOMMAND [options]``, one subcommand per tool.

Each subcommand hands its arguments, untouched, to the ``main`` of the module that
``python -m MODULE`` runs (``emissions run`` is ``python -m pipeline.run``), which parses and
checks them itself: the two spellings take the same options and behave the same. The module is
imported only once chosen, so ``emissions --help`` and ``emissions status`` never import Beam.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata

from pipeline import cli


@dataclass(frozen=True)
class Command:
    """A subcommand: the module whose ``main`` it calls, the arguments put before the user's
    (``ops.admin``'s own subcommand), and one line of help."""

    module: str
    help: str
    leading: tuple[str, ...] = ()


COMMANDS: dict[str, Command] = {
    "run": Command("pipeline.run", "compute every pending activity once, print the summary"),
    "follow": Command("pipeline.follow", "compute new and changed activities within seconds"),
    "status": Command("ops.status", "the last runs, what is pending; exit code for a monitor"),
    "init": Command("ops.admin", "create or migrate the schema, load the factors", ("init",)),
    "set-sources": Command("ops.admin", "change the schema's sources file", ("set-sources",)),
    "check-sources": Command(
        "ops.admin", "check a sources file against the database", ("check-sources",)
    ),
    "revision": Command("ops.admin", "the schema's migration revision", ("revision",)),
    "load-factors": Command("ops.admin", "load a factor file as a new edition", ("load-factors",)),
    "seed": Command("ops.seed", "append deterministic demo activities"),
    "local": Command("ops.local", "init, seed demo data when empty, and run (./run_local.sh)"),
    "embedded": Command("ops.embedded", "the embedded PostgreSQL: its url, a psql on it, stop"),
    "verify": Command("audit.verify", "recompute stored results and report any that differ"),
    "restate": Command("audit.restate", "recompute results under another factor edition"),
    "report": Command("audit.report", "write the self-contained HTML report"),
    "inventory": Command("audit.inventory", "one reporting year by scope, category and gas"),
    "market-based": Command("audit.market_based", "Scope 2 market-based beside location-based"),
}


def version() -> str:
    """The installed distribution's version ("unknown" when run from a bare checkout)."""
    try:
        return metadata.version("emissions-pipeline")
    except metadata.PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser, for ``--help`` and ``--version``: a subcommand's own options are
    its module's to parse."""
    parser = cli.Parser(
        prog="emissions",
        description=plain_doc(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="`emissions SUBCOMMAND --help` shows a subcommand's options.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND", title="subcommands")
    for name, command in COMMANDS.items():
        sub.add_parser(name, help=f"{command.help} (python -m {command.module})", add_help=False)
    return parser


def plain_doc() -> str:
    return cli.plain(__doc__).split("\n\n")[0]


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0].startswith("-"):
        parser = build_parser()
        if not args:
            parser.print_help()
            return cli.USAGE
        parser.parse_args(args)  # --help, --version (both exit), or an unknown option
        return cli.USAGE
    name, rest = args[0], args[1:]
    command = COMMANDS.get(name)
    if command is None:
        close = [c for c in COMMANDS if c.startswith(name)] or difflib.get_close_matches(
            name, COMMANDS, n=1
        )
        hint = f" (did you mean {close[0]}?)" if close else " (see emissions --help)"
        cli.refuse(f"unknown subcommand {name!r}{hint}")
    # The module's usage lines name the subcommand as typed here.
    cli.COMMAND_NAMES[command.module] = "emissions" if command.leading else f"emissions {name}"
    module = importlib.import_module(command.module)
    return int(module.main([*command.leading, *rest]))
