"""The embedded PostgreSQL (the one a command uses when no database is named): where it is, a
``psql`` on it, and stopping it.

    python -m ops.embedded url | psql [psql arguments] | stop

Its data stay in ``.pgdata`` in the checkout ($EMISSIONS_PGDATA; an installed package:
``$XDG_DATA_HOME/emissions-pipeline/pgdata``), and it is left running for the next command to
reuse; ``stop`` ends it (a command that needs it starts it again). It listens on a unix socket
in that folder only, for the database user ``postgres``; as root it runs as the OS user
``pgserver`` (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import os
import sys

from pipeline import cli
from pipeline.store import embedded


def build_parser() -> cli.Parser:
    parser = cli.parser("ops.embedded", __doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("url", help="start the server if it is not running, and print its URL")
    sub.add_parser("psql", help="start it if needed, and run its psql on the pipeline's database")
    sub.add_parser("stop", help="stop it (fast: sessions end, the data stay)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    given, extra = (args[:1], args[1:]) if args[:1] == ["psql"] else (args, [])
    chosen = parser.parse_args(given)
    folder = embedded.data_dir()
    if chosen.command == "stop":
        if embedded.stop(folder):
            print(f"stopped the embedded server of {folder}")
        else:
            print(f"no embedded server runs on {folder}")
        return cli.OK
    url = embedded.ensure_database(embedded.server_url(folder), embedded.DEFAULT_DATABASE)
    if chosen.command == "url":
        print(url)
        return cli.OK
    command = [*embedded.psql_command(url), *extra]
    sys.stdout.flush()
    os.execv(command[0], command)


if __name__ == "__main__":
    sys.exit(main())
