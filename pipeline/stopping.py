"""Stopping a run cleanly on SIGTERM or SIGINT, and keeping its stderr to its own lines.

``main`` installs the handlers, which only record the signal (``Stop``); the pipeline runs on
a thread of its own (``run_until_done``) while the main thread watches for it, and a stopped
run records itself as cancelled with what it had committed (``end_cancelled``). Beam's worker
threads print to stderr directly: ``WorkerStderr`` lets only the main thread's output through.
Whatever the runner starts outside this process (the job server of a portable runner, worker
processes) is stopped when the pipeline ends, however it ends, and the temp folders Beam
writes are removed (``Leftovers``).
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

import sqlalchemy as sa

from pipeline import editions, retry
from pipeline import summary as summaries
from pipeline.options import RunConfig
from pipeline.store import connections, runs, tables
from pipeline.summary import TRACEBACK, one_line

if TYPE_CHECKING:
    import apache_beam as beam

_LOG = logging.getLogger("pipeline.run")


class WorkerStderr(io.TextIOBase):
    """Stands for stderr while a run is on: what the main thread prints passes, what other
    threads print shows only at DEBUG.

    Beam's SDK worker prints a failed bundle's traceback on stderr from its worker threads
    (besides logging it), several times over and sometimes after the run has failed or while
    it is being stopped; the run's own line says what failed (``failure_message``). The
    log's handler writes to the real stderr (``original``), so log records of every thread
    still show."""

    def __init__(self, original: TextIO) -> None:
        super().__init__()
        self.original = original

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if threading.current_thread() is threading.main_thread() or _LOG.isEnabledFor(
            logging.DEBUG
        ):
            return self.original.write(text)
        return len(text)

    def flush(self) -> None:
        self.original.flush()

    def fileno(self) -> int:
        return self.original.fileno()

    def isatty(self) -> bool:
        return self.original.isatty()


def real_stderr() -> TextIO:
    """The process's stderr, behind a ``WorkerStderr`` if one stands for it."""
    return sys.stderr.original if isinstance(sys.stderr, WorkerStderr) else sys.stderr


class TracebacksAtDebug(logging.Filter):
    """Beam logs a failed bundle's worker traceback at ERROR, several times over (hundreds of
    lines for one error); the run's own error line says what failed (``failure_message``), so
    these records show only at DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("apache_beam") or record.levelno <= logging.DEBUG:
            return True
        if not record.exc_info and TRACEBACK not in record.getMessage():
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger().isEnabledFor(logging.DEBUG)


#: The signals that stop a run cleanly: Airflow's task timeout sends SIGTERM, Ctrl-C SIGINT.
STOP_SIGNALS = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "SIGINT"}


class Cancelled(Exception):
    """A stop signal, noticed by the main thread where stopping is safe."""

    def __init__(self, signum: int) -> None:
        self.signal_name = STOP_SIGNALS.get(signal.Signals(signum), f"signal {signum}")
        self.exit_code = 128 + signum  # as a shell reports a process ended by the signal
        #: The runner's result, when the pipeline runs elsewhere and its job can be cancelled.
        self.job: Any = None
        #: What the run started or wrote outside this process, stopped by ``end_cancelled``.
        self.leftovers: Leftovers | None = None
        super().__init__(f"cancelled by {self.signal_name}")


class Overtaken(Exception):
    """The run's record was finished by another process while the run worked (marked
    ``abandoned``: its heartbeat had stopped, the process frozen), noticed by the main thread:
    nothing the run writes from now on is stored, so it stops at once."""

    def __init__(self) -> None:
        #: The runner's result, when the pipeline runs elsewhere and its job can be cancelled.
        self.job: Any = None
        super().__init__("its record is no longer 'running'")


class Stop:
    """Which stop signal has arrived, if any.

    The handler only records it: the main thread looks where stopping is safe (between the
    steps of a run, and every tenth of a second while the pipeline runs). A handler that did
    more would run in the middle of whatever the main thread was doing (a transaction, a lock
    it holds), and the default SIGINT handler's ``KeyboardInterrupt`` tears the in-process
    runner down mid-bundle, with hundreds of lines of tracebacks."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[signal.Signals, Any] = {}
        self._overtaken: Callable[[], bool] = lambda: False

    def watch_record(self, overtaken: Callable[[], bool]) -> None:
        """Stops the pipeline (``Overtaken``) once ``overtaken()`` is true: the run's record
        was finished by another process (a follow run resumed after it was declared
        abandoned would otherwise poll on for ever, all its writes refused)."""
        self._overtaken = overtaken

    def overtaken(self) -> bool:
        return self._overtaken()

    def install(self) -> None:
        """Handle the stop signals (only the main thread may, and only ``main`` does: Beam's
        worker threads never see a signal)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)

    def reclaim(self) -> None:
        """Handle the stop signals again after a library took them (Beam's job server sets its
        own SIGINT handler when it starts), keeping the handlers ``restore`` puts back."""
        if threading.current_thread() is not threading.main_thread() or not self._previous:
            return
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._handle)

    def restore(self) -> None:
        """The handlers as they were (``main`` called in-process, by a test or a tool)."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, _: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum

    def check(self) -> None:
        """Raises ``Cancelled`` once a stop signal has arrived."""
        if self.signum is not None:
            raise Cancelled(self.signum)


def stoppable(command: Callable[[list[str], Stop], int], args: list[str]) -> int:
    """``command(args, stop)`` with the stop signals handled from the start, so that none of
    them arrives as a ``KeyboardInterrupt`` or an abrupt end, and stderr a ``WorkerStderr``;
    both are as before once it returns (unless the process set the latter for its life)."""
    stop = Stop()
    stop.install()
    stderr = sys.stderr
    if not isinstance(stderr, WorkerStderr):
        sys.stderr = WorkerStderr(stderr)
    try:
        return command(args, stop)
    finally:
        stop.restore()
        sys.stderr = stderr


def run_until_done(p: beam.Pipeline, stop: Stop, in_process: bool = True) -> dict[str, int] | None:
    """Runs the pipeline while the main thread watches for a stop signal; returns its
    counters, or raises what it raised, or ``Cancelled``.

    The in-process runner runs the whole pipeline inside ``p.run()``, which nothing can
    interrupt cleanly: it runs on a thread of its own, and on a signal it is left running (its
    threads are daemon threads) while the process ends once the run is recorded
    (``end_cancelled``). A runner that runs the job elsewhere (Flink, Dataflow) submits it in
    ``p.run()`` on the main thread (Beam's job server installs signal handlers, which only the
    main thread may), then its state is polled, and on a signal the job is cancelled."""
    if not in_process:
        stop.check()
        result = p.run()
        result.flink_rest = flink_rest(p)  # type: ignore[attr-defined]  # for cancel_job
        stop.reclaim()
        from apache_beam.runners.runner import PipelineState

        while not PipelineState.is_terminal(result.state):
            if stop.signum is not None:
                stopped = Cancelled(stop.signum)
                stopped.job = result
                raise stopped
            if stop.overtaken():
                overtaken = Overtaken()
                overtaken.job = result
                raise overtaken
            time.sleep(0.2)
        result.wait_until_finish()  # raises what the job failed with
        return summaries.counters(result)
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["result"] = result = p.run()
            result.wait_until_finish()
            outcome["counters"] = summaries.counters(result)
        except BaseException as e:  # noqa: BLE001 - raised again on the main thread
            outcome["error"] = e

    stop.check()
    thread = threading.Thread(target=work, name="pipeline", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.1)
        if stop.signum is not None and thread.is_alive():
            stopped = Cancelled(stop.signum)
            stopped.job = outcome.get("result")
            raise stopped
        if thread.is_alive() and stop.overtaken():
            overtaken = Overtaken()
            overtaken.job = outcome.get("result")
            raise overtaken
    if "error" in outcome:
        raise outcome["error"]
    counted: dict[str, int] | None = outcome["counters"]
    return counted


def cancel_job(result: Any) -> None:
    """Asks a runner that runs the job elsewhere (Flink, Dataflow) to cancel it; the
    in-process runner has no job to cancel (``p.run()`` returns when it is done).

    Beam's Flink job server cancels its invocation, not the Flink job: one whose workers run
    beside the TaskManagers would run on. So on Flink the job is also cancelled through the
    cluster's REST API, and awaited (CANCELED), before the run is recorded."""
    if result is None:
        return
    try:
        result.cancel()
    except Exception:  # noqa: BLE001 - best effort: not every runner can cancel
        _LOG.debug("the runner could not cancel the job", exc_info=True)
    rest = getattr(result, "flink_rest", None)
    job_id = str(getattr(result, "_job_id", ""))
    if rest and job_id:
        cancel_flink_job(rest, job_id.rsplit("_", 1)[0])


def flink_rest(p: beam.Pipeline) -> str | None:
    """The REST address of the Flink cluster ``p`` runs on (``http://host:port``), if any."""
    if type(p.runner).__name__ != "FlinkRunner":
        return None
    master = str(p.options.get_all_options().get("flink_master") or "")
    if not master or master.startswith("["):  # [auto], [local]: an embedded cluster
        return None
    return master if "://" in master else f"http://{master}"


def cancel_flink_job(rest: str, name: str, timeout: float = 60.0) -> list[str]:
    """Cancels the running Flink jobs named ``name`` (Beam names the Flink job after its
    ``job_name``) on the cluster at ``rest`` and waits until they have ended; returns their
    ids. Best effort: a cluster that does not answer is logged, not raised."""
    import json
    import urllib.request

    def running() -> list[str]:
        with urllib.request.urlopen(f"{rest}/jobs/overview", timeout=10) as resp:
            jobs = json.load(resp).get("jobs", [])
        ended = ("FINISHED", "FAILED", "CANCELED")
        return [str(j["jid"]) for j in jobs if j.get("name") == name and j["state"] not in ended]

    try:
        found = running()
        for jid in found:
            request = urllib.request.Request(f"{rest}/jobs/{jid}?mode=cancel", method="PATCH")
            urllib.request.urlopen(request, timeout=10).close()
        deadline = time.monotonic() + timeout
        while found and running() and time.monotonic() < deadline:
            time.sleep(0.5)
        return found
    except (OSError, ValueError, KeyError):
        _LOG.warning("could not cancel Flink job %s at %s", name, rest, exc_info=True)
        return []


def child_processes() -> dict[int, str]:
    """This process's live children, pid → start time (so that a pid used again later is
    another process). Read from ``/proc``: empty where there is none."""
    me = os.getpid()
    found: dict[int, str] = {}
    try:
        entries = list(Path("/proc").iterdir())
    except OSError:
        return found
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            # After "(name)": state, ppid, ... and the start time, the 22nd field of all.
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # ended meanwhile
        if int(fields[1]) == me and fields[0] != "Z":  # a zombie has ended already
            found[int(entry.name)] = fields[19]
    return found


def terminate(pids: list[int], timeout: float = 10.0) -> None:
    """SIGTERM to each of this process's children ``pids``, then SIGKILL to those still alive
    after ``timeout``; each is reaped."""

    def ended(pid: int) -> bool:
        try:
            return os.waitpid(pid, os.WNOHANG)[0] == pid
        except ChildProcessError:
            return True  # reaped already (by the Popen that started it)

    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    left = list(pids)
    while left and time.monotonic() < deadline:
        left = [pid for pid in left if not ended(pid)]
        if left:
            time.sleep(0.1)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


#: A run's temp folder: ``emissions-run-<pid>-<random>`` in the system's temp folder.
_TEMP_PREFIX = "emissions-run-"


def remove_killed_runs_temp(parent: str) -> list[str]:
    """Removes the temp folders in ``parent`` of runs whose process has ended: a run killed
    outright (SIGKILL, a lost machine) cannot remove its own. Only folders named by a run
    (``emissions-run-<pid>-…``), owned by this user, whose pid is no live process; a pid taken
    since by another process keeps its folder until that one ends. Returns the names removed."""
    removed: list[str] = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    for entry in entries:
        pid_text, _, rest = entry.name.removeprefix(_TEMP_PREFIX).partition("-")
        if not entry.name.startswith(_TEMP_PREFIX) or not pid_text.isdigit() or not rest:
            continue
        try:
            if not entry.is_dir(follow_symlinks=False):
                continue
            if entry.stat(follow_symlinks=False).st_uid != os.getuid():
                continue
        except OSError:
            continue
        if _alive(int(pid_text)):
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        removed.append(entry.name)
    if removed:
        _LOG.info("removed the temp folders of runs that were killed: %s", ", ".join(removed))
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


class Leftovers:
    """Stops and removes, once the pipeline has ended, what the runner started or wrote
    outside this process's memory: no run leaves a process or a temp folder behind.

    * A portable runner (``FlinkRunner``) starts Beam's job server, a JVM of some 300 MB with a
      temp folder of its own, and leaves stopping it to an ``atexit`` handler; a run ends with
      ``exit_now``, which runs none, so every run would leave one behind. The job servers the
      runner makes are recorded (through ``default_job_server``, the portable runner's hook
      for the job server it starts) and stopped with Beam's own ``stop`` (SIGINT, then a
      kill).
    * Any other child process started meanwhile and still alive (SDK worker processes, say)
      is stopped: TERM, then KILL.
    * Beam writes temp folders it never removes (the pipeline's own, the package built from
      ``--setup_file``, a requirements cache; the job server's Flink client, a job graph):
      while the pipeline is built and runs, Python's temp folder (``tempfile.tempdir``) and
      the job server's (``java.io.tmpdir``) are one of the run's own, removed at the end. A
      run killed outright cannot remove it: the next run on the machine does
      (``remove_killed_runs_temp``; the folder's name holds the run's pid).

    Used as ``with Leftovers() as leftovers:`` around building and running the pipeline, with
    ``leftovers.watch(p.runner)`` once the runner is made. A run stopped by a signal
    (``Cancelled``) is left to ``end_cancelled``, which cancels its job while the job server
    that can cancel it still runs, records the run while the in-process runner's flushes are
    held, and only then calls ``stop``."""

    def __init__(self) -> None:
        self.job_servers: list[Any] = []
        self._before = set(child_processes().items())
        if tempfile.tempdir is not None and not os.path.isdir(tempfile.tempdir):
            tempfile.tempdir = None  # a folder another run of this process has removed
        self._previous_temp = tempfile.tempdir
        remove_killed_runs_temp(tempfile.gettempdir())
        self.temp = tempfile.mkdtemp(prefix=f"{_TEMP_PREFIX}{os.getpid()}-")
        tempfile.tempdir = self.temp

    def watch(self, runner: Any) -> None:
        """Records the job servers ``runner`` starts, to stop them (a portable runner makes
        them in ``default_job_server``; other runners start none), with their temp in the
        run's."""
        make = getattr(runner, "default_job_server", None)
        if make is None:
            return

        def recorded(options: Any) -> Any:
            from apache_beam.options.pipeline_options import JobServerOptions

            jvm = options.view_as(JobServerOptions)
            given = list(jvm.job_server_jvm_properties or [])
            if not any(p.startswith("-Djava.io.tmpdir=") for p in given):
                jvm.job_server_jvm_properties = [*given, f"-Djava.io.tmpdir={self.temp}"]
            server = make(options)
            self.job_servers.append(server)
            return server

        runner.default_job_server = recorded  # this runner only, for this run only

    def __enter__(self) -> Leftovers:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, _: TracebackType | None
    ) -> None:
        if isinstance(error, Cancelled):
            error.leftovers = self  # end_cancelled stops them, once the run is recorded
        else:
            self.stop()

    def stop(self, timeout: float = 10.0) -> list[int]:
        """Stops the job servers, then the other children started since, and removes the
        run's temp folder; returns the pids of the children it had to stop."""
        for server in self.job_servers:
            try:
                server.stop()
            except Exception as e:  # noqa: BLE001 - the children are stopped below all the same
                _LOG.warning("Beam's job server did not stop by itself: %s", one_line(str(e)))
        self.job_servers.clear()
        left = [p for p, t in child_processes().items() if (p, t) not in self._before]
        terminate(left, timeout)
        if left:
            _LOG.debug("stopped %d process(es) the run had started: %s", len(left), left)
        if tempfile.tempdir == self.temp:
            # Two runs of one process overlapping (threads): the folder this run found in force
            # may be the other run's, removed since; then Python's own is in force again.
            previous = self._previous_temp
            tempfile.tempdir = previous if previous is None or os.path.isdir(previous) else None
        shutil.rmtree(self.temp, ignore_errors=True)
        return left


def end_cancelled(
    engine: sa.Engine,
    config: RunConfig,
    stopped: Cancelled,
    recorded: bool,
    counts: dict[str, dict[str, int]],
    started: float,
    exact: bool = True,
) -> NoReturn:
    """Ends a run stopped by a signal: cancels its job (a runner that runs it elsewhere),
    records it ``cancelled`` with what it committed, stops what it started (job server, worker
    processes: ``Leftovers``), says so in one line on stderr, and ends the process
    (``exit_now``) with 128 + the signal.

    From here on nothing else may reach stderr: the loggers are silenced and a dying thread's
    traceback is dropped. The flushes in progress are held at their commit
    (``runs.hold_commits``): those that got there commit, the others roll back when the
    process ends, which closes their connections; so the count recorded is exactly what stays
    stored, and the next run's pending work exactly what was not. The runner's threads are
    daemon threads, and the process ends without waiting for them. Workers in other processes
    (``exact`` False: Flink, Dataflow, worker processes) may commit after it has ended: then
    the count recorded is a lower bound, and says so."""
    logging.disable(logging.CRITICAL)
    threading.excepthook = lambda _: None
    cancel_job(stopped.job)
    name, run_id = stopped.signal_name, config.run_id
    if not recorded:
        print(
            f"run {run_id} cancelled by {name} before it started: nothing was written",
            file=sys.stderr,
        )
        engine.dispose()
        _stop_leftovers(stopped)
        exit_now(stopped.exit_code)
    # The held connection stays referenced (open) until the process ends: closing it would
    # let held flushes commit.
    line, _held = record_cancelled(engine, config, stopped, counts, started, exact)
    engine.dispose()  # the held connection stays open (checked out) until the process ends
    _stop_leftovers(stopped)
    print(line, file=sys.stderr)
    exit_now(stopped.exit_code)


def record_cancelled(
    engine: sa.Engine,
    config: RunConfig,
    stopped: Cancelled,
    counts: dict[str, dict[str, int]],
    started: float,
    exact: bool = True,
) -> tuple[str, sa.Connection | None]:
    """Records a stopped run ``cancelled`` with what it committed, counted while every flush
    is held at its commit (``runs.hold_commits``); returns the line to say and the held
    connection, which the caller keeps open until the process ends (None: the count is a
    lower bound, and the message says so)."""
    run_id, held = config.run_id, None
    try:
        held = runs.hold_commits(engine, config.schema, wait_s=10.0)
        coverage = runs.run_coverage(engine, run_id, config.schema)
        stored = int(coverage["overall"]["results"])
        # The dead letters it stored, from its write log (committed with them), whatever
        # became of them since (a result of a later version retires one).
        errors = sum(summaries.errors_stored(engine, run_id, config.schema).values())
        results = f"{stored:,} results were" if stored != 1 else "1 result was"
        at_least = "" if held is not None and exact else "at least "  # else a lower bound
        message = f"{stopped} after {at_least}{results} stored"
        done = runs.finish_run(
            engine,
            run_id,
            config.schema,
            status="cancelled",
            message=message,
            total_activities=sum(c["total"] for c in counts.values()),
            skipped=sum(c["total"] - c["pending"] for c in counts.values()),
            pending=sum(c["pending"] for c in counts.values()),
            total_processed=stored,
            errors=errors,
            total_co2e_tonnes=float(coverage["overall"]["kg_co2e"]) / 1000.0,
            quality=coverage,
            timings={"total_s": round(time.monotonic() - started, 3)},
            metrics_source="database",
            code_version=editions.code_version(),
        )
        line = f"run {run_id} {message}" + (
            "; the next run computes the rest"
            if done
            else f", but its record in {tables.RUNS_TABLE} was no longer 'running'"
        )
    except Exception as e:  # noqa: BLE001 - the run must still end, and say why
        why = connections.scrub(retry.describe(e), config.database_url)
        line = (
            f"run {run_id} {stopped}, but could not be recorded ({one_line(why)}): it stays "
            f"'running' in {tables.RUNS_TABLE}"
        )
    return line, held


def _stop_leftovers(stopped: Cancelled) -> None:
    """Stops what the stopped run started (job server, worker processes) and removes its temp
    folder before it ends: its job is cancelled and its outcome recorded by now."""
    if stopped.leftovers is not None:
        stopped.leftovers.stop()


def exit_now(code: int) -> NoReturn:
    """Ends the process once the run is recorded and its summary printed.

    The interpreter's own shutdown joins the runner's idle threads and frees every object one
    by one: half a second after a large run, for nothing, since everything that matters is
    committed and flushed by then. It runs no ``atexit`` handler either: what the run started
    outside this process has been stopped by then (``Leftovers``)."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
