"""A local Apache Flink session cluster to run the pipeline on, and the Beam options to use it.

``python -m ops.flink_cluster fetch|start|stop|status|args`` (see ``--help``).

What it needs is fetched once into a cache (``ops.flink_fetch``). The cluster binds
JobManager, TaskManagers and REST to 127.0.0.1 on free ports, keeps its configuration, logs
and pid files in its own directory (so it never touches another Flink on the machine), and is
stopped by the pids it wrote. Each TaskManager starts the Python workers itself
(``ops.flink_worker``). Standard library only: nothing here imports Beam or the pipeline.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ops.flink_fetch import (  # noqa: F401 - the fetch's names, as they always were here
    BEAM_JOB_SERVER_VERSION,
    CACHE_ENV,
    FLINK_MINOR,
    FLINK_VERSION,
    POM,
    PROGRESS_INTERVAL_S,
    PROJECT_ROOT,
    FlinkSetupError,
    _run,
    cache_dir,
    fetch,
    fetch_flink,
    fetch_job_server,
    folder_mb,
    job_server_jar_path,
    maven_downloads,
    say,
)
from pipeline import cli

DEFAULT_PARALLELISM = 2

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


#: Seconds a TaskManager keeps a finished job's blobs (the 157 MB job server jar each job
#: uploads): Flink's default, an hour, let 20 jobs pile up 3 GB.
BLOB_CLEANUP_S = 5


def config_yaml(rest_port: int, rpc_port: int, slots: int, workdir: Path) -> str:
    """Flink's ``config.yaml``: everything on 127.0.0.1, ``slots`` task slots per TaskManager,
    files in workdir, a finished job's blobs removed within seconds."""
    return f"""\
# Written by ops/flink_cluster.py for a local session cluster.
blob:
  service:
    cleanup:
      interval: {BLOB_CLEANUP_S}
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
    """A Flink session cluster on 127.0.0.1 whose files all live under ``workdir``:
    ``taskmanagers`` TaskManagers of ``slots`` task slots each."""

    home: Path
    workdir: Path
    rest_port: int
    rpc_port: int
    slots: int = DEFAULT_PARALLELISM
    taskmanagers: int = 1

    @classmethod
    def create(
        cls, home: Path, workdir: Path, slots: int = DEFAULT_PARALLELISM, taskmanagers: int = 1
    ) -> LocalFlinkCluster:
        return cls(home, workdir.resolve(), free_port(), free_port(), slots, taskmanagers)

    @property
    def total_slots(self) -> int:
        return self.slots * self.taskmanagers

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
        return bool(o) and int(o.get("slots-total", 0)) >= self.total_slots  # type: ignore[union-attr, arg-type]

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
        (conf / "workers").write_text("localhost\n" * self.taskmanagers)
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
            if time.monotonic() - started > 20 and len(self._alive_pids()) < 1 + self.taskmanagers:
                break  # a daemon died: its log says why
            time.sleep(1)
        details = self._log_tail()
        self.stop()
        raise FlinkSetupError(
            f"Flink did not offer {self.total_slots} task slots on {self.master} "
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
        """Stop the daemons this cluster started, by the pids they wrote, the Python workers
        they started, and any Beam job server still submitting to it (a run killed outright
        leaves its own behind): TERM, then KILL. Returns (daemons, job servers) stopped.

        This is what ``bin/stop-cluster.sh`` does, without its seconds of config parsing, and
        it can only ever reach this cluster's own processes.
        """
        servers = job_servers_of(self.master)
        pids = self._alive_pids()
        # The Python workers its TaskManagers started (PROCESS): they end with their job, but
        # a TaskManager killed outright cannot stop them.
        workers = children_of(pids)
        _terminate(servers + pids + workers, timeout)
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
                    "taskmanagers": self.taskmanagers,
                }
            )
        )

    @classmethod
    def load(cls, path: Path) -> LocalFlinkCluster:
        d = json.loads(path.read_text())
        return cls(
            Path(d["home"]),
            Path(d["workdir"]),
            d["rest_port"],
            d["rpc_port"],
            d["slots"],
            d.get("taskmanagers", 1),
        )


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


def children_of(parents: list[int]) -> list[int]:
    """The live processes whose parent is one of ``parents`` (from ``/proc``; none without)."""
    found: list[int] = []
    try:
        entries = [e for e in Path("/proc").iterdir() if e.name.isdigit()]
    except OSError:
        return found
    for entry in entries:
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) in parents and fields[0] != "Z":
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
    environment: str = "PROCESS",
    environment_config: str | None = None,
    worker_parallelism: int = 1,
) -> list[str]:
    """The Beam options that submit the pipeline to the Flink cluster at ``master``.

    PROCESS (the default) has each TaskManager start the Python workers itself, one process per
    job environment, with ``flink/worker-boot`` of this checkout (the same path on every
    TaskManager host): ``worker_parallelism`` (``--sdk_worker_parallelism``) processes per job
    on each TaskManager, one per task slot. The job carries the submitter's code identity, which
    the workers check (``ops.flink_worker``). LOOPBACK runs the workers inside the submitting
    process (one host only); EXTERNAL points Flink at a worker pool
    (``apache_beam.runners.worker.worker_pool_main``) with ``environment_config`` its
    ``host:port``. The code is never staged (no ``--setup_file``): workers run what is installed
    beside them.
    """
    from ops import flink_worker

    args = [
        "--runner=FlinkRunner",
        f"--flink_master={master}",
        f"--flink_version={FLINK_MINOR}",
        f"--flink_job_server_jar={job_server_jar}",
        f"--environment_type={environment}",
        f"--parallelism={parallelism}",
    ]
    if environment == "PROCESS":
        args += [
            f"--environment_options=process_command={flink_worker.BOOT}",
            f"--sdk_worker_parallelism={worker_parallelism}",
            f"--experiments={flink_worker.EXPERIMENT}{flink_worker.code_identity()}",
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
    start.add_argument("--slots", type=int, default=DEFAULT_PARALLELISM, help="per TaskManager")
    start.add_argument("--taskmanagers", type=int, default=1)
    sub.add_parser("stop", help="stop the local session cluster")
    sub.add_parser("status", help="print the cluster's /overview, exit 1 when it is down")
    args_p = sub.add_parser("args", help="print the Beam options for the running cluster")
    args_p.add_argument("--flink-master", default=None, help="host:port of another cluster")
    args_p.add_argument(
        "--parallelism", type=int, default=None, help="default: the local cluster's task slots"
    )
    args_p.add_argument(
        "--environment",
        choices=("PROCESS", "EXTERNAL", "LOOPBACK"),
        default="PROCESS",
        help="where the Python workers run (docs/flink.md); default PROCESS, beside each "
        "TaskManager",
    )
    args_p.add_argument("--environment-config", default=None, help="EXTERNAL: the pool's host:port")
    args_p.add_argument(
        "--worker-parallelism",
        type=int,
        default=None,
        help="Python workers per job on each TaskManager: its task slots (default: the local "
        "cluster's, else 1)",
    )
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
            cluster = LocalFlinkCluster.create(home, state.parent, args.slots, args.taskmanagers)
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
            master, slots, total = args.flink_master, 1, DEFAULT_PARALLELISM
            if master is None:
                if not state.is_file():
                    raise FlinkSetupError("no local cluster: run 'start' or pass --flink-master")
                local = LocalFlinkCluster.load(state)
                master, slots, total = local.master, local.slots, local.total_slots
            chosen = beam_args(
                master,
                fetch_job_server(),
                args.parallelism or total,
                args.environment,
                args.environment_config,
                args.worker_parallelism or slots,
            )
            print(" ".join(chosen))
    except FlinkSetupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
