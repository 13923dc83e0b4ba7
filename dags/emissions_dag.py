"""Nightly emissions calculation, scheduled by Apache Airflow.

One task runs the Beam pipeline as ``python -m pipeline.run`` through the Apache Beam
provider's ``BeamRunPythonPipelineOperator``, for the run's data interval:
``--date-from {{ data_interval_start | ds }} --date-to {{ data_interval_end | ds }}``. The
pipeline's writes are idempotent, so a retry or a manual rerun of an interval adds nothing.

Deployment-specific settings live outside this file (see docs/airflow.md):

* the database: Airflow Connection ``emissions_db``. Its URL reaches the pipeline through the
  ``EMISSIONS_DATABASE_URL`` environment variable of the pipeline's process, never its command
  line, so it shows up neither in the task log nor in the rendered template fields;
* the pipeline's interpreter: Airflow Variable ``emissions_python``, the ``python`` of the
  virtualenv where the project is installed (``pip install -r requirements.txt -e .``);
* the runner and its options: DAG params, which a manual trigger may override. On
  ``FlinkRunner`` the task adds the options of the project's own Flink job server
  (``--flink_version``, ``--flink_job_server_jar``, with the Python workers started by each
  TaskManager, ``PROCESS``, and a parallelism of 2 unless told otherwise), as ``python -m
  ops.flink_cluster args`` gives them in the project's checkout (for its local cluster when
  no ``flink_master`` is given): without them Beam would download a job server jar from the
  internet;
* retries: 2, ten minutes apart, unless Airflow's config section ``[emissions]`` says otherwise
  (``retries``, ``retry_delay_seconds``).

Nothing here connects to anything at parse time.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator, Mapping
from datetime import timedelta
from typing import Any
from urllib.parse import quote, urlencode

import pendulum
from airflow.providers.apache.beam.operators.beam import BeamRunPythonPipelineOperator
from airflow.sdk import DAG, BaseHook, CronDataIntervalTimetable, Param, conf
from airflow.sdk.log import mask_secret

DAG_ID = "emissions_daily"
DATABASE_CONN_ID = "emissions_db"
DATABASE_URL_ENV = "EMISSIONS_DATABASE_URL"
PYTHON_VARIABLE = "emissions_python"
RUNNERS = ("DirectRunner", "FlinkRunner", "DataflowRunner")


def database_url(
    *,
    login: str | None,
    password: str | None,
    host: str | None,
    port: int | None,
    schema: str | None,
    extra: Mapping[str, Any],
) -> str:
    """The SQLAlchemy URL of an Airflow Connection's fields.

    ``Connection.get_uri()`` is not usable as it is: it spells the scheme ``postgres``, which
    SQLAlchemy 2 rejects. Extras become query parameters (``sslmode``, ``host`` for a unix socket
    directory, ...) except ``sqlalchemy_scheme``, which overrides the scheme.
    """
    query = {str(k): str(v) for k, v in extra.items() if k != "sqlalchemy_scheme"}
    scheme = str(extra.get("sqlalchemy_scheme") or "postgresql")
    netloc = ""
    if login:
        netloc = quote(login, safe="")
        if password:
            netloc += ":" + quote(password, safe="")
        netloc += "@"
    if host and host.startswith("/"):
        # A unix socket directory has no place in the authority part of a URL.
        query.setdefault("host", host)
    elif host:
        netloc += host
        if port:
            netloc += f":{port}"
    url = f"{scheme}://{netloc}/{quote(schema or '', safe='')}"
    if query:
        url += "?" + urlencode(query, safe="/")
    return url


#: Prints the project's checkout (where ``ops/`` and ``.cache/flink`` are), for the interpreter
#: the project is installed in (``pip install -e .``).
_PROJECT_ROOT = (
    "import pathlib, pipeline; print(pathlib.Path(pipeline.__file__).resolve().parents[1])"
)


def flink_options(python: str, flink_master: str | None) -> dict[str, str]:
    """The Beam options that submit the pipeline to Flink with the project's own job server,
    as ``python -m ops.flink_cluster args`` prints them in the project's checkout (and builds
    the job server jar the first time); without ``flink_master``, for the local cluster of
    ``./run_flink.sh``. The runner itself is the operator's."""
    where = subprocess.run(
        [python, "-c", _PROJECT_ROOT], capture_output=True, text=True, timeout=120, check=False
    )
    if where.returncode != 0:
        raise RuntimeError(
            f"{python} cannot import the pipeline (is the project installed there?): "
            + (where.stderr.strip().splitlines() or ["no output"])[-1]
        )
    command = [python, "-m", "ops.flink_cluster", "args"]
    if flink_master:
        command += ["--flink-master", str(flink_master)]
    found = subprocess.run(
        command,
        cwd=where.stdout.strip().splitlines()[-1],
        capture_output=True,
        text=True,
        timeout=3600,  # the first time, Maven builds the jar: minutes
        check=False,
    )
    if found.returncode != 0:
        raise RuntimeError(
            "the Flink job server options: "
            + (found.stderr.strip().splitlines() or ["no output"])[-1]
        )
    options = {}
    for word in found.stdout.split():
        key, _, value = word.removeprefix("--").partition("=")
        options[key] = value
    options.pop("runner", None)
    return options


@contextlib.contextmanager
def _environment_variable(name: str, value: str) -> Iterator[None]:
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


class EmissionsPipelineOperator(BeamRunPythonPipelineOperator):
    """``BeamRunPythonPipelineOperator`` running ``python -m pipeline.run`` for one interval.

    Adds what the stock operator lacks: the database URL from an Airflow Connection handed over
    in the environment (the Beam hook starts the pipeline with the task's environment and offers
    no other channel that stays out of the command line), and runner options from a DAG param
    merged into the pipeline options. (The stock operator needs the Google provider installed,
    whatever the runner: see docs/airflow.md.)
    """

    template_fields = (
        *BeamRunPythonPipelineOperator.template_fields,
        "py_interpreter",
        "runner_options",
    )

    def __init__(
        self,
        *,
        database_conn_id: str,
        runner_options: dict[str, Any] | str | None = None,
        **kwargs: Any,
    ) -> None:
        # "-m" + "pipeline.run": the hook runs [py_interpreter, *py_options, py_file, *args].
        super().__init__(py_file="pipeline.run", py_options=["-m"], **kwargs)
        self.database_conn_id = database_conn_id
        self.runner_options = runner_options or {}

    def merged_pipeline_options(self) -> dict[str, Any]:
        """The rendered runner options and pipeline options, as one dict for the hook; on
        Flink, after the job server's options (``flink_options``)."""
        if not isinstance(self.runner_options, dict):
            raise ValueError(f"runner_options must be an object, got {self.runner_options!r}")
        defaults: dict[str, Any] = {}
        if self.runner == "FlinkRunner":
            defaults = flink_options(self.py_interpreter, self.runner_options.get("flink_master"))
        # Runner options given win over the defaults, and the DAG's own options (the interval,
        # the flags) over free-form runner options.
        return {**defaults, **self.runner_options, **self.pipeline_options}

    def execute(self, context: Any) -> Any:
        self.pipeline_options = self.merged_pipeline_options()
        conn = BaseHook.get_connection(self.database_conn_id)
        url = database_url(
            login=conn.login,
            password=conn.password,
            host=conn.host,
            port=conn.port,
            schema=conn.schema,
            extra=conn.extra_dejson,
        )
        # Should the pipeline ever echo its URL, the task log shows *** in place of the secrets.
        if conn.password:
            mask_secret(conn.password)
        mask_secret(url)
        with _environment_variable(DATABASE_URL_ENV, url):
            return super().execute(context)


with DAG(
    dag_id=DAG_ID,
    description="Calculate the emissions of each day's activities with the Beam pipeline",
    # A data interval of one day, [midnight, next midnight) UTC. (A bare "@daily" would give
    # Airflow 3's CronTriggerTimetable, whose data interval is empty.)
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    # Early, so that past intervals can be run by hand or backfilled (an interval before the
    # start date would "succeed" without running the task); catchup=False keeps the scheduler
    # to the latest interval only.
    start_date=pendulum.datetime(2000, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    # Rendered params keep their types: a false flag stays False, and the hook leaves it out.
    render_template_as_native_obj=True,
    default_args={
        # Settable per deployment as AIRFLOW__EMISSIONS__RETRIES and
        # AIRFLOW__EMISSIONS__RETRY_DELAY_SECONDS (Airflow's config, read without any I/O).
        "retries": conf.getint("emissions", "retries", fallback=2),
        "retry_delay": timedelta(
            seconds=conf.getint("emissions", "retry_delay_seconds", fallback=600)
        ),
        "execution_timeout": timedelta(hours=6),
    },
    params={
        "runner": Param("DirectRunner", enum=list(RUNNERS), description="Beam runner"),
        "runner_options": Param(
            {},
            type="object",
            description=(
                "Options for the runner: Beam option names without the leading --, e.g. "
                '{"flink_master": "host:8081"} (the Flink job server options are added) or '
                '{"project": "p", "region": "europe-west1", "temp_location": "gs://b/tmp"}'
            ),
        ),
        "partitions": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            description="--partitions: read ranges per table (default: the pipeline's)",
        ),
        "no_radiative_forcing": Param(
            False,
            type="boolean",
            description="--no-radiative-forcing: leave out the radiative forcing uplift of flights",
        ),
    },
    tags=["emissions", "beam"],
) as dag:
    EmissionsPipelineOperator(
        task_id="calculate_emissions",
        database_conn_id=DATABASE_CONN_ID,
        py_interpreter=f"{{{{ var.value.get('{PYTHON_VARIABLE}', 'python3') }}}}",
        runner="{{ params.runner }}",
        runner_options="{{ params.runner_options }}",
        pipeline_options={
            "date-from": "{{ data_interval_start | ds }}",
            "date-to": "{{ data_interval_end | ds }}",
            # None is left out by the hook, True becomes a bare flag, False is left out.
            "partitions": "{{ params.partitions }}",
            "no-radiative-forcing": "{{ params.no_radiative_forcing }}",
        },
    )
