"""Load the DAG folder and render the pipeline task, as Airflow would; print the result as JSON.

Runs inside the Airflow virtualenv (tests/test_airflow_dag.py drives it through a subprocess,
since Airflow and the pipeline live in different virtualenvs):

    .venv-airflow/bin/python airflow/inspect_dag.py DAGS_FOLDER \
        --interval-start 2025-03-04 [--conf '{"no_radiative_forcing": true}']

Prints how long the DagBag took to import, its import errors, the DAG's scheduling settings,
the task's rendered template fields, the exact command the Beam hook would start and, for each
``--connection-uri``, the database URL the task would hand the pipeline.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from typing import Any

import pendulum


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dags_folder")
    parser.add_argument("--dag-id", default="emissions_daily")
    parser.add_argument("--task-id", default="calculate_emissions")
    parser.add_argument("--interval-start", default="2025-03-04", help="YYYY-MM-DD, UTC")
    parser.add_argument("--conf", default="{}", help="DAG run conf (JSON), as a trigger gives")
    parser.add_argument(
        "--connection-uri",
        action="append",
        default=[],
        help="an Airflow Connection URI; the report gives the database URL the task makes of it",
    )
    args = parser.parse_args(argv)

    started = time.monotonic()
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(args.dags_folder)
    import_seconds = time.monotonic() - started
    report: dict[str, Any] = {
        "import_seconds": import_seconds,
        "import_errors": {str(k): str(v) for k, v in bag.import_errors.items()},
        "dag_ids": sorted(bag.dag_ids),
    }
    dag = bag.get_dag(args.dag_id)
    if dag is None:
        print(json.dumps(report))
        return 1

    from airflow.providers.apache.beam.hooks.beam import beam_options_to_args
    from airflow.sdk.execution_time.context import VariableAccessor
    from airflow.utils.helpers import convert_camel_to_snake

    task = dag.get_task(args.task_id)
    start = pendulum.parse(args.interval_start, tz="UTC")
    end = start.add(days=1)
    params = copy.deepcopy(dag.params)
    params.update(json.loads(args.conf))  # as a trigger's conf overrides the defaults
    context = {
        "dag": dag,
        "task": task,
        "params": params.validate(),
        "logical_date": start,
        "data_interval_start": start,
        "data_interval_end": end,
        "ds": start.to_date_string(),
        "var": {
            "value": VariableAccessor(deserialize_json=False),
            "json": VariableAccessor(deserialize_json=True),
        },
    }
    task.render_template_fields(context)
    if args.connection_uri:
        from airflow.sdk import Connection

        module = sys.modules[type(task).__module__]
        connections = [Connection.from_uri(u, conn_id="probe") for u in args.connection_uri]
        report["database_urls"] = [
            module.database_url(
                login=c.login,
                password=c.password,
                host=c.host,
                port=c.port,
                schema=c.schema,
                extra=c.extra_dejson,
            )
            for c in connections
        ]
    options = task.merged_pipeline_options()
    snake = {convert_camel_to_snake(k): v for k, v in options.items()}
    report.update(
        {
            "timetable": type(dag.timetable).__name__,
            "timetable_cron": getattr(dag.timetable, "expression", None),
            "timetable_timezone": str(getattr(dag.timetable, "timezone", None)),
            "catchup": dag.catchup,
            "max_active_runs": dag.max_active_runs,
            "retries": task.retries,
            "retry_delay_seconds": task.retry_delay.total_seconds(),
            "data_interval": [str(start), str(end)],
            "rendered": {
                "runner": task.runner,
                "py_interpreter": task.py_interpreter,
                "py_options": task.py_options,
                "py_file": task.py_file,
                "pipeline_options": task.pipeline_options,
                "runner_options": task.runner_options,
            },
            # What BeamHook.start_python_pipeline runs (less the airflow-version label, which
            # the operator adds in execute).
            "command": [
                task.py_interpreter,
                *task.py_options,
                task.py_file,
                f"--runner={task.runner}",
                *beam_options_to_args(snake),
            ],
        }
    )
    # The report is the last line: Airflow may print to stdout before it.
    print(json.dumps(report, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
