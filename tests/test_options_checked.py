"""Options are checked (issue 23, item 1): every command refuses an option that is neither its
own nor a registered Beam option, in one line with the closest known spelling and exit 2, and
says what a bad value should have been; the command lines the project builds itself (the
scripts, the Airflow DAG, the Flink cluster's options, the docs) are all still accepted; the
reference's option table (docs/reference.md) is the one ``--help`` shows.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from apache_beam.options.pipeline_options import (
    FlinkRunnerOptions,
    GoogleCloudOptions,
    PipelineOptions,
    PortableOptions,
    StandardOptions,
)

from audit import inventory, report, restate, verify
from benchmarks import chaos
from benchmarks import follow as follow_benchmark
from benchmarks import run as benchmark
from ops import admin, flink_cluster, local, seed, status
from pipeline import follow, run
from pipeline.follow import add_follow_arguments
from pipeline.options import parse_run_args, validate
from pipeline.store import connections

ROOT = Path(__file__).resolve().parent.parent
UNREACHABLE = "postgresql://nobody@127.0.0.1:1/none"


def outcome(main: Callable[[list[str]], int], argv: list[str]) -> int:
    """A command's exit code, whether it returns it or raises ``SystemExit``."""
    try:
        return main(argv)
    except SystemExit as e:
        return int(e.code or 0)


def refusal(
    main: Callable[[list[str]], int], argv: list[str], capsys: pytest.CaptureFixture[str]
) -> str:
    """The one line a command refuses ``argv`` with (exit 2, nothing on stdout)."""
    code = outcome(main, argv)
    captured = capsys.readouterr()
    assert (code, captured.out) == (2, ""), captured.err
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    return lines[0]


# --- The misspelled flag of the issue -------------------------------------------------------


def test_a_misspelled_flag_is_refused_before_anything_is_computed(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    engine = connections.make_engine(database_url, poolclass=sa.pool.NullPool)
    try:
        seed.seed(engine, 200)
        line = refusal(
            run.main,
            ["--database-url", database_url, "--no-radiative-forcng", "--progress-interval", "0"],
            capsys,
        )
        assert line == (
            "error: unknown option --no-radiative-forcng (did you mean --no-radiative-forcing?)"
        )
        with engine.connect() as conn:
            for table in ("calculation_runs", "emission_results", "emission_errors"):
                assert (
                    conn.execute(sa.text(f"SELECT count(*) FROM emissions.{table}")).scalar() == 0
                )
        # Spelled right, every flight is computed without radiative forcing.
        argv = [
            "--database-url",
            database_url,
            "--no-radiative-forcing",
            "--progress-interval",
            "0",
        ]
        assert run.main(argv) == 0
        assert json.loads(capsys.readouterr().out)["status"] == "succeeded"
        with engine.connect() as conn:
            flights = conn.execute(
                sa.text(
                    "SELECT count(*), count(*) FILTER (WHERE radiative_forcing) "
                    "FROM emissions.emission_results WHERE activity_type = 'air_travel'"
                )
            ).one()
        assert flights[0] > 30 and flights[1] == 0
    finally:
        engine.dispose()


# --- pipeline.run and pipeline.follow: their own options, and Beam's ------------------------


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["--partitons", "4"], "unknown option --partitons (did you mean --partitions?)"),
        # A prefix is a typo too, not an abbreviation to guess from.
        (["--partition", "4"], "unknown option --partition (did you mean --partitions?)"),
        (["--partitions", "x"], "--partitions: expected an integer, got 'x'"),
        (["--partitions"], "--partitions: expected a value"),
        (["--max-kwh", "lots"], "--max-kwh: expected a number, got 'lots'"),
        (
            ["--range-planner", "row"],
            "--range-planner: expected one of rows, bounds, got 'row' (did you mean rows?)",
        ),
        (
            ["--runner=FlinkRunner", "--flink_mastr=localhost:8081"],
            "unknown option --flink_mastr (did you mean --flink_master?)",
        ),
        (["--direct_num_workers", "two"], "--direct_num_workers: expected an integer, got 'two'"),
        # Beam alone would take a prefix of its own options; the run reads some of them itself.
        (
            ["--runner=DataflowRunner", "--service_account=sa@p.iam.gserviceaccount.com"],
            "unknown option --service_account (did you mean --service_account_email?)",
        ),
        (
            ["--direct_num_work=1"],
            "unknown option --direct_num_work (did you mean --direct_num_workers?)",
        ),
        (["--no-radiative-forcing", "yes"], "unexpected argument 'yes' (see --help)"),
        (
            ["--runner", "DirectRunner", "--activity_type", "spend"],
            "unknown option --activity_type (did you mean --activity_types?)",
        ),
    ],
)
def test_run_refuses_in_one_line(
    argv: list[str], line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert refusal(run.main, ["--database-url", UNREACHABLE, *argv], capsys) == f"error: {line}"


@pytest.mark.parametrize(
    ("given", "meant"), [("FlinkRuner", "FlinkRunner"), ("flink", "FlinkRunner"), ("x.Y", None)]
)
def test_a_runner_beam_does_not_list_is_refused(
    given: str, meant: str | None, capsys: pytest.CaptureFixture[str]
) -> None:
    # Beam takes "flink" or a class path too; the run decides by the name whether the job
    # runs in this process, so only the names Beam lists are taken.
    line = refusal(run.main, ["--database-url", UNREACHABLE, f"--runner={given}"], capsys)
    assert line == (
        f"error: --runner: expected one of {', '.join(StandardOptions.KNOWN_RUNNER_NAMES)}, "
        f"got {given!r}" + (f" (did you mean {meant}?)" if meant else "")
    )


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (
            ["--poll-intervall", "1"],
            "unknown option --poll-intervall (did you mean --poll-interval?)",
        ),
        (["--poll-interval", "soon"], "--poll-interval: expected a number, got 'soon'"),
        (["--stop-afterr", "60"], "unknown option --stop-afterr (did you mean --stop-after?)"),
    ],
)
def test_follow_refuses_in_one_line(
    argv: list[str], line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert refusal(follow.main, ["--database-url", UNREACHABLE, *argv], capsys) == f"error: {line}"


# --- Every other command ---------------------------------------------------------------------

#: Commands without --database-url, or that must be given it after their subcommand.
NO_URL = (
    admin.main,
    flink_cluster.main,
    benchmark.main,
    chaos.main,
    follow_benchmark.main,
    local.main,
)


@pytest.mark.parametrize(
    ("main", "argv", "line"),
    [
        (
            admin.main,
            ["init", "--id-typ", "uuid"],
            "unknown option --id-typ (did you mean --id-type?)",
        ),
        (
            admin.main,
            ["revision", "--schem", "x"],
            "unknown option --schem (did you mean --schema?)",
        ),
        (
            admin.main,
            ["load-factors", "--kind", "egrd", "--file", "f.csv"],
            "--kind: expected one of air, country_grid, cpi, egrid, residual_mix, sef, "
            "uk_electricity, got 'egrd' (did you mean egrid?)",
        ),
        (
            admin.main,
            ["check-sources", "--source", "x.toml"],
            "unknown option --source (did you mean --sources?)",
        ),
        (
            status.main,
            ["--stale-afte", "3"],
            "unknown option --stale-afte (did you mean --stale-after?)",
        ),
        (status.main, ["--last", "many"], "--last: expected an integer, got 'many'"),
        (seed.main, ["--count", "x"], "--count: expected an integer, got 'x'"),
        (
            seed.main,
            ["--count", "5", "--if-emtpy"],
            "unknown option --if-emtpy (did you mean --if-empty?)",
        ),
        (seed.main, [], "missing --count (see --help)"),
        (local.main, ["--seed-dem"], "unknown option --seed-dem (did you mean --seed-demo?)"),
        (
            local.main,
            ["--runner=DirectRunner", "--no-radiative-forcng"],
            "unknown option --no-radiative-forcng (did you mean --no-radiative-forcing?)",
        ),
        (verify.main, ["--sampel", "3"], "unknown option --sampel (did you mean --sample?)"),
        (restate.main, ["--pins", "air=x"], "unknown option --pins (did you mean --pin?)"),
        (report.main, ["--outt", "r.html"], "unknown option --outt (did you mean --out?)"),
        (
            inventory.main,
            ["--year", "2024", "--base-yaer", "2019"],
            "unknown option --base-yaer (did you mean --base-year?)",
        ),
        (inventory.main, [], "missing --year (see --help)"),
        (benchmark.main, ["--scal"], "unknown option --scal (did you mean --scale?)"),
        (chaos.main, ["--schedule", "2"], "unknown option --schedule (did you mean --schedules?)"),
        (follow_benchmark.main, ["--rat", "3"], "unknown option --rat (did you mean --rate?)"),
        (
            follow_benchmark.main,
            ["--poll-intervall", "1"],
            "unknown option --poll-intervall (did you mean --poll-interval?)",
        ),
        (
            flink_cluster.main,
            ["args", "--flink_master", "h:1"],
            "unknown option --flink_master (did you mean --flink-master?)",
        ),
    ],
)
def test_every_command_refuses_in_one_line(
    main: Callable[[list[str]], int],
    argv: list[str],
    line: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert refusal(
        main, ["--database-url", UNREACHABLE, *argv][2 * (main in NO_URL) :], capsys
    ) == (f"error: {line}")


def test_an_unknown_subcommand_is_named_with_the_closest(
    capsys: pytest.CaptureFixture[str],
) -> None:
    [commands] = [
        a for a in admin.build_parser()._actions if isinstance(a, argparse._SubParsersAction)
    ]
    assert refusal(admin.main, ["inti"], capsys) == (
        f"error: command: expected one of {', '.join(commands.choices)}, got 'inti' "
        "(did you mean init?)"
    )


@pytest.mark.parametrize(
    "main",
    [run.main, follow.main, admin.main, status.main, seed.main, local.main, verify.main,
     restate.main, report.main, inventory.main, benchmark.main, follow_benchmark.main,
     flink_cluster.main, chaos.main],
)  # fmt: skip
def test_help_still_works(
    main: Callable[[list[str]], int], capsys: pytest.CaptureFixture[str]
) -> None:
    assert outcome(main, ["--help"]) == 0
    shown = capsys.readouterr().out
    assert "usage: python -m " in shown and "--help" in shown


# --- The command lines the project builds stay accepted --------------------------------------

JAR = "/srv/flink/beam-runners-flink-job-server.jar"
FLINK = flink_cluster.beam_args("localhost:8081", JAR, 2)
#: docs/flink.md, "Google Cloud Dataflow".
DATAFLOW = (
    "--runner=DataflowRunner --project=my-gcp-project --region=europe-west1 "
    "--temp_location=gs://my-emissions-bucket/tmp "
    "--staging_location=gs://my-emissions-bucket/staging "
    "--setup_file=./setup.py --job_name=emissions-calculation --max_num_workers=8 "
    "--subnetwork=regions/europe-west1/subnetworks/emissions --no_use_public_ips --partitions=32"
).split()
#: dags/emissions_dag.py as the Beam hook starts it (tests/test_airflow_dag.py), with the label
#: the provider's operator adds.
AIRFLOW = [
    "--runner=FlinkRunner",
    "--flink_master=localhost:8081",
    "--flink_version=1.19",
    f"--flink_job_server_jar={JAR}",
    "--environment_type=LOOPBACK",
    "--parallelism=4",
    f"--setup_file={ROOT / 'setup.py'}",
    "--labels=airflow-version=v3-0-2",
    "--date-from=2025-03-04",
    "--date-to=2025-03-05",
    "--partitions=4",
    "--no-radiative-forcing",
]


@pytest.mark.parametrize(
    ("argv", "where"),
    [
        (["--runner=DirectRunner", "--no-radiative-forcing", "--partitions", "4"], "run_local.sh"),
        ([*FLINK, "--no-radiative-forcing"], "run_flink.sh"),
        (
            flink_cluster.beam_args("localhost:8081", JAR, 2, "EXTERNAL", "localhost:50000"),
            "tests/test_flink.py: a worker pool",
        ),
        (["--runner=PortableRunner", "--job_endpoint=localhost:8099",
          "--environment_type=LOOPBACK"], "a job server of your own"),
        (DATAFLOW, "docs/flink.md"),
        (AIRFLOW, "dags/emissions_dag.py"),
        (["--runner=DirectRunner", "--direct_num_workers=2",
          "--direct_running_mode=multi_threading"], "docs/reference.md"),
        (["--activity_types=spend", "--rows_per_range=5000", "--log_level=debug"],
         "Beam's spelling"),
    ],
)  # fmt: skip
def test_the_command_lines_the_project_builds_are_accepted(argv: list[str], where: str) -> None:
    options, beam_args = parse_run_args(argv)
    config = validate(options, "postgresql://u@h/d")
    # Beam gets what is Beam's: no option of the pipeline's own spelled with dashes.
    assert not [a for a in beam_args if re.match(r"--[a-z]+-", a)], beam_args
    beam = PipelineOptions(argv)
    runner = beam.view_as(StandardOptions).runner
    assert runner == next((a.split("=")[1] for a in argv if a.startswith("--runner=")), None)
    if where == "dags/emissions_dag.py":
        assert (config.date_from, config.partitions, config.radiative_forcing) == (
            "2025-03-04",
            4,
            False,
        )
        assert beam.view_as(FlinkRunnerOptions).flink_master == "localhost:8081"
        assert beam.view_as(GoogleCloudOptions).labels == ["airflow-version=v3-0-2"]
    if where == "docs/flink.md":
        assert config.partitions == 32 and beam.view_as(GoogleCloudOptions).region == "europe-west1"
    if where.startswith("tests/test_flink.py"):
        assert beam.view_as(PortableOptions).environment_config == "localhost:50000"


def test_follow_accepts_the_documented_command_lines() -> None:
    # docs/follow.md (on Flink) and examples/emissions-follow.service.
    for argv in ([*FLINK, "--stop-after", "3600"], ["--stop-after", "86400"]):
        options, _ = parse_run_args(argv, add_follow_arguments, prog="pipeline.follow")
        assert options.stop_after in (3600.0, 86400.0)


def test_beam_is_not_imported_when_no_beam_option_is_given() -> None:
    probe = (
        "import sys; from pipeline.options import parse_run_args; "
        "parse_run_args(['--partitions', '4', '--no-radiative-forcing']); "
        "print('apache_beam' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "False"


# --- The reference's option table is --help's ------------------------------------------------


def help_options(module: str, *argv: str) -> dict[str, str]:
    """The long options ``python -m MODULE --help`` shows (first spelling → its help text)."""
    done = subprocess.run(
        [sys.executable, "-m", module, *argv, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    found: dict[str, str] = {}
    current = None
    for line in done.stdout.split("options:", 1)[1].splitlines():
        option = re.match(r"\s{2}(--[\w-]+)", line)
        if option:
            current = option.group(1)
            found[current] = line
        elif current:
            found[current] += " " + line.strip()
    found.pop("--help", None)
    return found


def table_options(markdown: str, after: str = "") -> dict[str, str]:
    """The options that the first markdown table after ``after`` names (each → its default
    cell)."""
    lines = (markdown.split(after, 1)[1] if after else markdown).splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    found: dict[str, str] = {}
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        if line.startswith("|---"):
            continue
        names, default = line.split(" | ")[:2]
        for option in re.findall(r"`(--[\w-]+)", names):
            found[option] = default
    return found


def test_the_reference_table_lists_exactly_the_options_of_run_help() -> None:
    readme = (ROOT / "docs" / "reference.md").read_text()
    documented = table_options(readme, "### Options of `pipeline.run`")
    shown = help_options("pipeline.run")
    assert sorted(documented) == sorted(shown)
    # The defaults the table gives as plain figures are --help's.
    for option, default in documented.items():
        if re.fullmatch(r"[\d.e]+", default):
            said = re.search(r"default: ([\d.e+]+)", shown[option])
            assert said and float(said.group(1)) == float(default), (option, shown[option])


def test_the_follow_table_lists_exactly_follows_own_options() -> None:
    documented = table_options((ROOT / "docs" / "follow.md").read_text())
    assert sorted(documented) == sorted(
        set(help_options("pipeline.follow")) - set(help_options("pipeline.run"))
    )


@pytest.mark.parametrize(
    "module", ["ops.admin", "ops.seed", "pipeline.run", "pipeline.follow", "ops.status"]
)
def test_the_reference_synopsis_names_only_options_that_exist(module: str) -> None:
    readme = (ROOT / "docs" / "reference.md").read_text()
    block = readme.split("## The commands underneath", 1)[1].split("```", 2)[1]
    lines = [line for line in block.splitlines() if f"-m {module} " in line]
    assert lines
    shown = set(help_options(module))
    if module == "ops.admin":  # the line names the options of its subcommands
        shown = {o for c in ("init", "revision", "load-factors") for o in help_options(module, c)}
    for line in lines:
        named = set(re.findall(r"(--[\w-]+)", line))
        assert named <= shown, named - shown
