"""Fetching what the local Flink cluster and Beam's Flink job server need, once, into a cache
(``.cache/flink`` in the project, or ``$EMISSIONS_FLINK_CACHE``), from the package registries
only:

* the Flink distribution, assembled from PyPI: ``apache-flink-libraries`` holds ``lib/`` (the
  ``flink-dist`` jar and friends), ``apache-flink`` holds ``bin/`` and ``conf/``. Both are only
  downloaded and unpacked, never installed: apache-flink pins an old apache-beam.
* the Beam Flink job server jar, built by Maven from Beam's published modules with
  ``flink/jobserver/pom.xml`` (Beam's ready-made ``beam-runners-flink-*-job-server`` jar is not
  served by the Maven repository this project can reach; see docs/flink.md).

``python -m ops.flink_cluster fetch`` runs it. Standard library only.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

# The combination tests/test_flink.py proves; docs/flink.md has the matrix.
FLINK_VERSION = "1.19.3"
FLINK_MINOR = "1.19"  # Beam's --flink_version
BEAM_JOB_SERVER_VERSION = "2.62.0"  # keep in step with flink/jobserver/pom.xml

# What a first fetch costs, measured (docs/flink.md): the Flink download, the Flink home it
# unpacks to, what Maven fetches to build the job server, and the jar.
_LIBRARIES_MB = 233
_FLINK_HOME_MB = 246
_MAVEN_MB = 182
_JAR_MB = 157

CACHE_ENV = "EMISSIONS_FLINK_CACHE"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
POM = PROJECT_ROOT / "flink" / "jobserver" / "pom.xml"


class FlinkSetupError(RuntimeError):
    """Fetching, starting or reaching the cluster failed; the message says what and where."""


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or PROJECT_ROOT / ".cache" / "flink").resolve()


#: Seconds between the lines that say a long fetch is still going.
PROGRESS_INTERVAL_S = 10.0


def say(line: str) -> None:
    """A progress line, on stderr: stdout carries what ``args`` prints for scripts."""
    print(line, file=sys.stderr, flush=True)


def _run(
    cmd: Sequence[str],
    what: str,
    log: Path,
    progress: Callable[[], str] | None = None,
    **kw: object,
) -> None:
    """Run ``cmd``, output to ``log``; on failure raise with the log's tail. With
    ``progress``, every ``PROGRESS_INTERVAL_S`` a line says how long it has run and what
    ``progress()`` says (how much is downloaded so far), so that a fetch of minutes is never
    silent."""
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    done = threading.Event()

    def tick() -> None:
        while not done.wait(PROGRESS_INTERVAL_S):
            extra = progress() if progress else ""
            say(f"  ... {what}: {time.monotonic() - started:.0f} s{extra}")

    ticker = threading.Thread(target=tick, name="fetch-progress", daemon=True)
    ticker.start()
    try:
        with log.open("w") as out:
            proc = subprocess.run(list(cmd), stdout=out, stderr=subprocess.STDOUT, **kw)  # type: ignore[call-overload]
    finally:
        done.set()
        ticker.join()
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise FlinkSetupError(
            f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\nlog: {log}\n{tail}"
        )


def folder_mb(*folders: Path) -> float:
    """Megabytes of the files under ``folders`` (those that exist)."""
    total = 0
    for folder in folders:
        for path in folder.rglob("*") if folder.is_dir() else ():
            try:
                total += path.stat().st_size if path.is_file() else 0
            except OSError:
                pass  # moved or removed meanwhile
    return total / 1e6


#: What Maven logs for each artifact it has fetched: "Downloaded from central: URL (12 kB at …)".
_MAVEN_DOWNLOADED = re.compile(r"Downloaded from \S+: \S+ \(([\d.,]+) (B|kB|MB|GB)")
_UNITS = {"B": 1e-6, "kB": 1e-3, "MB": 1.0, "GB": 1e3}


def maven_downloads(log: Path) -> tuple[int, float]:
    """(artifacts, megabytes) Maven's log says it has downloaded so far."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return 0, 0.0
    found = _MAVEN_DOWNLOADED.findall(text)
    return len(found), sum(float(n.replace(",", "")) * _UNITS[u] for n, u in found)


def fetch_flink(cache: Path | None = None) -> Path:
    """The Flink home (``bin/``, ``lib/``, ``conf/``), assembled from PyPI if missing."""
    cache = cache or cache_dir()
    home = cache / f"flink-{FLINK_VERSION}"
    if (home / "lib" / f"flink-dist-{FLINK_VERSION}.jar").is_file():
        return home
    downloads = cache / "downloads"
    # pip's own temp (where the download grows) under the cache, so that progress can see it.
    pip_temp = cache / "pip-tmp"
    pip_temp.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TMPDIR": str(pip_temp)}
    started = time.monotonic()
    say(
        f"fetching Flink {FLINK_VERSION} from PyPI into {cache} (once: a {_LIBRARIES_MB} MB "
        f"download, {_FLINK_HOME_MB} MB unpacked)"
    )

    def downloaded() -> str:
        return f", {folder_mb(downloads, pip_temp):.0f} MB on disk so far"

    pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check"]
    try:
        _run(
            pip + ["-d", str(downloads), f"apache-flink-libraries=={FLINK_VERSION}"],
            "downloading apache-flink-libraries from PyPI",
            cache / "logs" / "pip-libraries.log",
            progress=downloaded,
            env=env,
        )
        # bin/ and conf/ are the same in every wheel: take one for a fixed platform, whatever
        # Python runs this, so no sdist has to be built.
        _run(
            pip
            + ["-d", str(downloads), "--only-binary=:all:", "--python-version=3.11"]
            + ["--implementation=cp", "--platform=manylinux2014_x86_64"]
            + [f"apache-flink=={FLINK_VERSION}"],
            "downloading apache-flink from PyPI",
            cache / "logs" / "pip-flink.log",
            progress=downloaded,
            env=env,
        )
    finally:
        shutil.rmtree(pip_temp, ignore_errors=True)
    libraries = next(downloads.glob(f"apache[-_]flink[-_]libraries-{FLINK_VERSION}*"), None)
    wheel = next(downloads.glob(f"apache_flink-{FLINK_VERSION}-*.whl"), None)
    if libraries is None or wheel is None:
        raise FlinkSetupError(f"Flink {FLINK_VERSION} downloads not found in {downloads}")
    staging = Path(tempfile.mkdtemp(prefix="flink-home-", dir=cache))
    try:
        unpacked = staging / "unpacked"
        if libraries.suffix == ".whl":
            with zipfile.ZipFile(libraries) as z:
                z.extractall(unpacked)
        else:
            with tarfile.open(libraries) as t:
                if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4
                    t.extractall(unpacked, filter="data")
                else:
                    t.extractall(unpacked)
        deps = next(unpacked.glob("**/deps/lib")).parent
        new_home = staging / "home"
        for part in ("lib", "opt", "plugins", "licenses"):
            if (deps / part).is_dir():
                shutil.copytree(deps / part, new_home / part)
        (new_home / "bin").mkdir()
        for jar in (deps / "bin").glob("*"):
            shutil.copy2(jar, new_home / "bin" / jar.name)
        with zipfile.ZipFile(wheel) as z:
            for name in z.namelist():
                top, _, rest = name.partition("/")
                folder, _, leaf = rest.partition("/")
                if top == "pyflink" and folder in ("bin", "conf") and leaf and "/" not in leaf:
                    (new_home / folder).mkdir(exist_ok=True)
                    (new_home / folder / leaf).write_bytes(z.read(name))
        for script in (new_home / "bin").iterdir():
            if script.suffix in (".sh", "") and script.is_file():
                script.chmod(0o755)
        if not (new_home / "bin" / "start-cluster.sh").is_file():
            raise FlinkSetupError(f"{wheel.name} has no pyflink/bin/start-cluster.sh")
        if home.exists():
            shutil.rmtree(home)
        new_home.rename(home)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(downloads, ignore_errors=True)  # unpacked: the archives are not needed again
    say(f"Flink {FLINK_VERSION} ready in {home} ({time.monotonic() - started:.0f} s)")
    return home


def job_server_jar_path(cache: Path | None = None) -> Path:
    cache = cache or cache_dir()
    return cache / f"beam-runners-flink-{FLINK_MINOR}-job-server-{BEAM_JOB_SERVER_VERSION}.jar"


def fetch_job_server(cache: Path | None = None) -> Path:
    """The Beam Flink job server jar, built with Maven from Beam's modules if missing."""
    cache = cache or cache_dir()
    jar = job_server_jar_path(cache)
    if jar.is_file():
        return jar
    mvn = shutil.which("mvn")
    if mvn is None:
        raise FlinkSetupError("Maven (mvn) is needed to build the Beam Flink job server jar")
    if not POM.is_file():
        raise FlinkSetupError(f"{POM} is missing: run from a checkout of the project")
    build = cache / "jobserver-build"
    log = cache / "logs" / "mvn-jobserver.log"
    started = time.monotonic()
    say(
        f"building the Beam {BEAM_JOB_SERVER_VERSION} Flink job server jar with Maven (once: "
        f"{_MAVEN_MB} MB of Beam's modules into Maven's local repository, a {_JAR_MB} MB jar)"
    )

    def fetched() -> str:
        count, mb = maven_downloads(log)
        return f", {count} artifacts ({mb:.0f} MB) downloaded so far"

    _run(
        [mvn, "-B", "-f", str(POM), f"-Djobserver.build.directory={build}", "package"],
        "building the Beam Flink job server jar with Maven",
        log,
        progress=fetched,
    )
    built = build / "beam-flink-job-server.jar"
    if not built.is_file():
        raise FlinkSetupError(f"Maven finished but {built} is missing")
    tmp = jar.with_suffix(".jar.tmp")
    shutil.copy2(built, tmp)
    tmp.rename(jar)
    shutil.rmtree(build, ignore_errors=True)
    say(f"job server jar ready: {jar} ({time.monotonic() - started:.0f} s)")
    return jar


def fetch(cache: Path | None = None) -> tuple[Path, Path]:
    """Everything the cluster and the job server need: (Flink home, job server jar)."""
    return fetch_flink(cache), fetch_job_server(cache)
