"""A local Apache Flink session cluster to run the pipeline on, and the Beam options to use it.

``python -m ops.flink_cluster fetch|start|stop|status|args`` (see ``--help``).

What it needs is fetched once into a cache (``.cache/flink`` in the project, or
``$EMISSIONS_FLINK_CACHE``) from the package registries only:

* the Flink distribution, assembled from PyPI: ``apache-flink-libraries`` holds ``lib/`` (the
  ``flink-dist`` jar and friends), ``apache-flink`` holds ``bin/`` and ``conf/``. Both are only
  downloaded and unpacked, never installed: apache-flink pins an old apache-beam.
* the Beam Flink job server jar, built by Maven from Beam's published modules with
  ``flink/jobserver/pom.xml`` (Beam's ready-made ``beam-runners-flink-*-job-server`` jar is not
  served by the Maven repository this project can reach; see docs/flink.md).

The cluster binds JobManager, TaskManager and REST to 127.0.0.1 on free ports, keeps its
configuration, logs and pid files in its own directory (so it never touches another Flink on
the machine), and is stopped by the pids it wrote. Standard library only: nothing here imports
Beam or the pipeline.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline import cli

# The combination tests/test_flink.py proves; docs/flink.md has the matrix.
FLINK_VERSION = "1.19.3"
FLINK_MINOR = "1.19"  # Beam's --flink_version
BEAM_JOB_SERVER_VERSION = "2.62.0"  # keep in step with flink/jobserver/pom.xml
DEFAULT_PARALLELISM = 2

# What a first fetch costs, measured (docs/flink.md): the Flink download, the Flink home it
# unpacks to, what Maven fetches to build the job server, and the jar.
_LIBRARIES_MB = 233
_FLINK_HOME_MB = 246
_MAVEN_MB = 182
_JAR_MB = 157

CACHE_ENV = "EMISSIONS_FLINK_CACHE"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
POM = PROJECT_ROOT / "flink" / "jobserver" / "pom.xml"

# Flink 1.19's own defaults for running on Java 17 (from the distribution's config.yaml).
_JAVA_OPTS = " ".join(
    [
        "--add-exports=java.base/sun.net.util=ALL-UNNAMED",
        "--add-exports=java.rmi/sun.rmi.registry=ALL-UNNAMED",
        "--add-exports=java.security.jgss/sun.security.krb5=ALL-UNNAMED",
    ]
    + [
        f"--add-opens=java.base/{pkg}=ALL-UNNAMED"
        for pkg in (
            "java.lang",
            "java.net",
            "java.io",
            "java.nio",
            "sun.nio.ch",
            "java.lang.reflect",
            "java.text",
            "java.time",
            "java.util",
            "java.util.concurrent",
            "java.util.concurrent.atomic",
            "java.util.concurrent.locks",
        )
    ]
)


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config_yaml(rest_port: int, rpc_port: int, slots: int, workdir: Path) -> str:
    """Flink's ``config.yaml``: everything on 127.0.0.1, ``slots`` task slots, files in workdir."""
    return f"""\
# Written by pipeline/flink_cluster.py for a local session cluster.
env:
  java:
    opts:
      all: {_JAVA_OPTS}
  pid:
    dir: {workdir}
  log:
    dir: {workdir / "log"}
io:
  tmp:
    dirs: {workdir / "tmp"}
jobmanager:
  bind-host: 127.0.0.1
  rpc:
    address: 127.0.0.1
    port: {rpc_port}
  memory:
    process:
      size: 1024m
  execution:
    failover-strategy: region
taskmanager:
  bind-host: 127.0.0.1
  host: 127.0.0.1
  numberOfTaskSlots: {slots}
  memory:
    process:
      size: 1728m
parallelism:
  default: {slots}
rest:
  address: 127.0.0.1
  bind-address: 127.0.0.1
  port: {rest_port}
"""


@dataclass
class LocalFlinkCluster:
    """A Flink session cluster on 127.0.0.1 whose files all live under ``workdir``."""

    home: Path
    workdir: Path
    rest_port: int
    rpc_port: int
    slots: int = DEFAULT_PARALLELISM

    @classmethod
    def create(
        cls, home: Path, workdir: Path, slots: int = DEFAULT_PARALLELISM
    ) -> LocalFlinkCluster:
        return cls(home, workdir.resolve(), free_port(), free_port(), slots)

    @property
    def master(self) -> str:
        """The value of Beam's ``--flink_master``."""
        return f"127.0.0.1:{self.rest_port}"

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["FLINK_CONF_DIR"] = str(self.workdir / "conf")
        env["FLINK_LOG_DIR"] = str(self.workdir / "log")
        return env

    def overview(self) -> dict[str, object] | None:
        """The REST API's ``/overview``, or None when it does not answer."""
        url = f"http://127.0.0.1:{self.rest_port}/overview"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return dict(json.load(resp))
        except (OSError, ValueError, urllib.error.URLError):
            return None

    def cancel_jobs(self) -> list[str]:
        """Cancel every job still running on the cluster (a hung test must not hold slots)."""
        base = f"http://127.0.0.1:{self.rest_port}/jobs"
        cancelled = []
        try:
            with urllib.request.urlopen(base, timeout=5) as resp:
                jobs = json.load(resp).get("jobs", [])
            for job in jobs:
                if job.get("status") in ("RUNNING", "CREATED", "RESTARTING", "INITIALIZING"):
                    req = urllib.request.Request(f"{base}/{job['id']}?mode=cancel", method="PATCH")
                    urllib.request.urlopen(req, timeout=5).close()
                    cancelled.append(str(job["id"]))
        except (OSError, ValueError, urllib.error.URLError):
            pass
        return cancelled

    def healthy(self) -> bool:
        o = self.overview()
        return bool(o) and int(o.get("slots-total", 0)) >= self.slots  # type: ignore[union-attr, arg-type]

    def start(self, timeout: float = 180.0) -> None:
        """Write the configuration, run ``bin/start-cluster.sh`` and wait for all slots."""
        if self.healthy():
            raise FlinkSetupError(f"a Flink cluster already answers on {self.master}")
        conf = self.workdir / "conf"
        if conf.exists():
            shutil.rmtree(conf)
        shutil.copytree(self.home / "conf", conf)
        (conf / "config.yaml").write_text(
            config_yaml(self.rest_port, self.rpc_port, self.slots, self.workdir)
        )
        (conf / "flink-conf.yaml").unlink(missing_ok=True)
        (conf / "masters").write_text(f"localhost:{self.rest_port}\n")
        (conf / "workers").write_text("localhost\n")
        for sub in ("log", "tmp"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        if self._alive_pids():
            raise FlinkSetupError(f"this cluster's daemons already run: {self._pid_files()}")
        for stale in self._pid_files():
            stale.unlink()
        _run(
            [str(self.home / "bin" / "start-cluster.sh")],
            "starting the Flink cluster",
            self.workdir / "log" / "start-cluster.out",
            env=self._env(),
            cwd=self.workdir,
        )
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.healthy():
                return
            if time.monotonic() - started > 20 and len(self._alive_pids()) < 2:
                break  # a daemon died: its log says why
            time.sleep(1)
        details = self._log_tail()
        self.stop()
        raise FlinkSetupError(
            f"Flink did not offer {self.slots} task slots on {self.master} "
            f"within {timeout:.0f}s; logs in {self.workdir / 'log'}\n{details}"
        )

    def _pid_files(self) -> list[Path]:
        # flink-daemon.sh names them flink-$USER-<daemon>.pid; $USER may be unset.
        return sorted(self.workdir.glob("flink-*-*.pid"))

    def _alive_pids(self) -> list[int]:
        pids = []
        for f in self._pid_files():
            for line in f.read_text().split() if f.is_file() else []:
                pid = int(line)
                if _alive(pid) and _is_flink(pid):
                    pids.append(pid)
        return pids

    def _log_tail(self, lines: int = 30) -> str:
        out = []
        for log in sorted((self.workdir / "log").glob("*")):
            text = log.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {log.name}\n" + "\n".join(text))
        return "\n".join(out)

    def stop(self, timeout: float = 30.0) -> tuple[int, int]:
        """Stop the daemons this cluster started, by the pids they wrote, and any Beam job
        server still submitting to it (a run killed outright leaves its own behind): TERM,
        then KILL. Returns (daemons, job servers) stopped.

        This is what ``bin/stop-cluster.sh`` does, without its seconds of config parsing, and
        it can only ever reach this cluster's own processes.
        """
        servers = job_servers_of(self.master)
        pids = self._alive_pids()
        _terminate(servers + pids, timeout)
        for f in self._pid_files():
            f.unlink(missing_ok=True)
        return len(pids), len(servers)

    def __enter__(self) -> LocalFlinkCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def save(self, path: Path) -> None:
        path.write_text(
            json.dumps(
                {
                    "home": str(self.home),
                    "workdir": str(self.workdir),
                    "rest_port": self.rest_port,
                    "rpc_port": self.rpc_port,
                    "slots": self.slots,
                }
            )
        )

    @classmethod
    def load(cls, path: Path) -> LocalFlinkCluster:
        d = json.loads(path.read_text())
        return cls(Path(d["home"]), Path(d["workdir"]), d["rest_port"], d["rpc_port"], d["slots"])


def _is_flink(pid: int) -> bool:
    """False when ``pid`` now belongs to something else (a stale pid file, a reused pid)."""
    cmdline = Path(f"/proc/{pid}/cmdline")
    try:
        # Just started, it may still be the shell of flink-daemon.sh that then execs java.
        return b"flink" in cmdline.read_bytes()
    except OSError:
        return not cmdline.parent.parent.joinpath("self").exists()  # no /proc: trust the file


def _terminate(pids: list[int], timeout: float) -> None:
    """TERM to each of ``pids``, then KILL to those still alive after ``timeout``."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.2)
    for pid in pids:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def job_servers_of(master: str) -> list[int]:
    """The pids of the Beam Flink job servers (``java … --flink-master URL``) that submit to
    the cluster at ``master`` (``host:port``)."""
    targets = {master, f"http://{master}", f"https://{master}"}
    found: list[int] = []
    try:
        entries = list(Path("/proc").iterdir())
    except OSError:
        return found
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            argv = [
                a.decode(errors="replace") for a in (entry / "cmdline").read_bytes().split(b"\0")
            ]
        except OSError:
            continue
        if not argv or not Path(argv[0]).name.startswith("java") or "--flink-master" not in argv:
            continue
        at = argv.index("--flink-master") + 1
        if at < len(argv) and argv[at] in targets and _alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie has ended: only its parent has yet to reap it)."""
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc to tell: it answered the signal


def beam_args(
    master: str,
    job_server_jar: Path | str,
    parallelism: int = DEFAULT_PARALLELISM,
    environment: str = "LOOPBACK",
    environment_config: str | None = None,
) -> list[str]:
    """The Beam options that submit the pipeline to the Flink cluster at ``master``.

    LOOPBACK runs the Python SDK harness inside the submitting process (one host); EXTERNAL
    points Flink at a worker pool (``apache_beam.runners.worker.worker_pool_main``) running
    beside each TaskManager, with ``environment_config`` its ``host:port``.
    """
    args = [
        "--runner=FlinkRunner",
        f"--flink_master={master}",
        f"--flink_version={FLINK_MINOR}",
        f"--flink_job_server_jar={job_server_jar}",
        f"--environment_type={environment}",
        f"--parallelism={parallelism}",
        f"--setup_file={PROJECT_ROOT / 'setup.py'}",
    ]
    if environment_config:
        args.append(f"--environment_config={environment_config}")
    return args


def start_worker_pool(port: int, log: Path) -> subprocess.Popen[bytes]:
    """A Beam SDK worker pool on 127.0.0.1:``port``, for ``--environment_type=EXTERNAL``.

    On a real cluster one runs beside each TaskManager. The pool starts its workers as plain
    ``python``, so this interpreter's directory goes first on ``PATH``: the workers then import
    the project from this environment.
    """
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        pool = subprocess.Popen(
            [sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main"]
            + [f"--service_port={port}"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if pool.poll() is not None:
            raise FlinkSetupError(f"the worker pool exited ({pool.returncode}); log: {log}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return pool
        time.sleep(0.5)
    pool.kill()
    raise FlinkSetupError(f"the worker pool did not listen on {port} within 60s; log: {log}")


def _state_file() -> Path:
    return cache_dir() / "cluster" / "cluster.json"


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser("ops.flink_cluster", __doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("fetch", help="download Flink and build the job server jar, if missing")
    start = sub.add_parser("start", help="fetch, then start the local session cluster")
    start.add_argument("--slots", type=int, default=DEFAULT_PARALLELISM)
    sub.add_parser("stop", help="stop the local session cluster")
    sub.add_parser("status", help="print the cluster's /overview, exit 1 when it is down")
    args_p = sub.add_parser("args", help="print the Beam options for the running cluster")
    args_p.add_argument("--flink-master", default=None, help="host:port of another cluster")
    args_p.add_argument("--parallelism", type=int, default=DEFAULT_PARALLELISM)
    args = parser.parse_args(argv)
    state = _state_file()
    try:
        if args.command == "fetch":
            home, jar = fetch()
            print(f"flink home: {home}\njob server jar: {jar}")
        elif args.command == "start":
            if state.is_file() and LocalFlinkCluster.load(state).healthy():
                print(f"already running: --flink_master={LocalFlinkCluster.load(state).master}")
                return 0
            home, _ = fetch()
            cluster = LocalFlinkCluster.create(home, state.parent, args.slots)
            cluster.start()
            cluster.save(state)
            print(f"Flink {FLINK_VERSION} running: --flink_master={cluster.master}")
        elif args.command == "stop":
            if not state.is_file():
                print("not running")
                return 0
            daemons, servers = LocalFlinkCluster.load(state).stop()
            state.unlink()
            print(
                f"stopped: the local Flink cluster ({daemons} daemon(s))"
                + (f" and {servers} Beam job server(s) left by killed runs" if servers else "")
            )
        elif args.command == "status":
            overview = LocalFlinkCluster.load(state).overview() if state.is_file() else None
            print(json.dumps(overview) if overview else "not running")
            return 0 if overview else 1
        elif args.command == "args":
            master = args.flink_master
            if master is None:
                if not state.is_file():
                    raise FlinkSetupError("no local cluster: run 'start' or pass --flink-master")
                master = LocalFlinkCluster.load(state).master
            print(" ".join(beam_args(master, fetch_job_server(), args.parallelism)))
    except FlinkSetupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
