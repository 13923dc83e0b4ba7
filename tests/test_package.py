"""The package as a team installs it (issue 27): ``pip install <checkout>`` into a new
virtualenv outside the checkout, then the ``emissions`` command from another folder, against a
PostgreSQL named by libpq's variables alone.

Nothing downloads: the new virtualenv sees the shared one's packages through a ``.pth`` file
(the dependencies are installed there already), and pip is told ``--no-index --no-deps
--no-build-isolation`` (setuptools and wheel come from the shared virtualenv too). The
installed copy, not the checkout, is what runs: the commands start in a temporary folder
with the checkout off ``sys.path``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A new virtualenv with the checkout installed in it (not editable); its ``bin``."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    purelib = Path(sysconfig.get_paths(vars={"base": str(venv)})["purelib"])
    # The shared virtualenv's packages after the new one's own: its dependencies, pip and
    # setuptools, but not its editable copy of the project (a .pth inside is not read).
    shared = sysconfig.get_paths()["purelib"]
    (purelib / "shared.pth").write_text(shared + "\n")
    python = venv / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "--quiet", "--no-index", "--no-deps"]
    with _leaves_no_build_files():
        subprocess.run(
            [*pip, "--no-build-isolation", str(ROOT)], check=True, cwd=venv, env=_clean_env()
        )
    yield venv / "bin"


@contextlib.contextmanager
def _leaves_no_build_files() -> Iterator[None]:
    """setuptools builds in the checkout (``build/``, ``*.egg-info``): removed after, unless
    they were there before."""
    made = [
        ROOT / "build",
        *(ROOT / f"{n}.egg-info" for n in ("emissions_pipeline", "emissions_pipeline_core")),
    ]
    before = {path for path in made if path.exists()}
    try:
        yield
    finally:
        for path in made:
            if path not in before:
                shutil.rmtree(path, ignore_errors=True)


def _clean_env(**more: str) -> dict[str, str]:
    """This process's environment without what would choose a database, a schema or sources,
    or put the checkout on the path."""
    drop = ("PG", "EMISSIONS_", "PYTHON", "VIRTUAL_ENV")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    return {**env, **more}


def _libpq_env(url: str) -> dict[str, str]:
    """The database of ``url`` as libpq's variables (the embedded server: a socket folder)."""
    parsed = sa.make_url(url)
    host = parsed.query.get("host") or parsed.host or ""
    named = {
        "PGHOST": str(host),
        "PGPORT": str(parsed.port or ""),
        "PGUSER": parsed.username or "",
        "PGPASSWORD": parsed.password or "",
        "PGDATABASE": parsed.database or "",
    }
    return {k: v for k, v in named.items() if v}


def test_installed_command_runs_from_any_folder(
    installed: Path, empty_database: str, tmp_path: Path
) -> None:
    env = _clean_env(**_libpq_env(empty_database))

    def emissions(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(installed / "emissions"), *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    where = subprocess.run(
        [str(installed / "python"), "-c", "import pipeline, ops, audit; print(ops.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.startswith(str(installed.parent)), where.stdout

    shown = emissions("--help")
    assert shown.returncode == 0, shown.stderr
    for name in ("run", "follow", "status", "init", "verify", "restate", "report", "seed"):
        assert f"\n    {name} " in shown.stdout
    assert emissions("--version").stdout.strip() == "emissions 0.2.0"
    assert emissions("status", "--help").stdout.startswith("usage: emissions status ")

    init = emissions("init")
    assert init.returncode == 0, init.stderr
    assert json.loads(init.stdout)["schema"] == "emissions"

    seeded = emissions("seed", "--count", "300", "--seed", "7")
    assert seeded.returncode == 0, seeded.stderr

    ran = emissions("run", "--partitions", "2")
    assert ran.returncode == 0, ran.stderr
    summary = json.loads(ran.stdout)
    assert summary["status"] == "succeeded"
    assert summary["pending"] == 300
    assert summary["total_processed"] + summary["errors"] == 300
    assert summary["total_processed"] > 280

    status = emissions("status", "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    assert json.loads(status.stdout)["runs"][0]["run_id"] == summary["run_id"]


def test_worker_sdist_holds_the_core_only(tmp_path: Path) -> None:
    """What Beam's ``--setup_file`` ships to workers (``pipeline.run`` sets
    ``EMISSIONS_PACKAGE=core`` before Beam stages it): ``pipeline`` and ``transforms``, with
    the factor files and migrations, and no tools; without it, the sdist holds every wing."""

    def sdist(folder: Path, **more: str) -> set[str]:
        subprocess.run(
            [sys.executable, "setup.py", "-q", "sdist", "--dist-dir", str(folder)],
            cwd=ROOT,
            env=_clean_env(**more),
            check=True,
            capture_output=True,
        )
        (made,) = folder.glob("*.tar.gz")
        with tarfile.open(made) as tar:
            return {n.split("/", 2)[1] for n in tar.getnames() if n.count("/") >= 2}

    with _leaves_no_build_files():
        core = sdist(tmp_path / "core", EMISSIONS_PACKAGE="core")
        full = sdist(tmp_path / "full")
    assert {"pipeline", "transforms"} <= core
    assert not core & {"audit", "ops", "emissions", "benchmarks", "tests"}
    assert {"pipeline", "transforms", "audit", "ops", "emissions"} <= full
    assert not full & {"benchmarks", "tests"}


def test_the_command_refuses_what_it_cannot_use_in_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from emissions import cli as command

    for argv, said in (
        (["rn"], "error: unknown subcommand 'rn' (did you mean run?)"),
        (["--bogus"], "error: unknown option --bogus (see --help)"),
        (["embedded", "halt"], "error: COMMAND: expected one of url, psql, stop, got 'halt'"),
        (["status", "--stale-after", "x"], "error: --stale-after: expected a number, got 'x'"),
    ):
        with pytest.raises(SystemExit) as refused:
            command.main(argv)
        assert refused.value.code == 2
        captured = capsys.readouterr()
        assert (captured.out, captured.err) == ("", said + "\n"), argv
    assert command.main([]) == 2  # the help, on stdout
    assert "subcommands:" in capsys.readouterr().out
