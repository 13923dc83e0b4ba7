"""The Python worker that runs beside each Flink TaskManager (Beam's PROCESS environment).

A TaskManager starts one for each job's environment (``--sdk_worker_parallelism`` of them per
job), running ``flink/worker-boot`` with ``--id=… --provision_endpoint=…``, and stops it when
the job ends: one process per environment, so any number of jobs and slots share a
TaskManager safely (an EXTERNAL worker pool names every worker ``1-1`` and kills one job's
worker when another's environment closes). The pip wheel of apache-beam has no boot binary;
this is the part of it the pipeline needs: ask the provision service for the job's options and
endpoints, then run Beam's SDK harness (``sdk_worker_main``) in this process.

It runs only the code installed beside it: the job's staged packages are not installed. So it
first compares the job's code (``--experiments=emissions_code=<version>+<fingerprint>``, which
``ops.flink_cluster args`` adds) with its own, and refuses a job from other code in one line
naming both: the harness then fails every bundle with that line before it loads any of the
job's code, so that the runner hands it to the submitter as the job's error. Standard library
and Beam only; the fingerprint reads the sources, imports none.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import logging
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent
#: The packages whose code the workers run (setup.py ships these): what the fingerprint covers.
CODE_PACKAGES = ("pipeline", "transforms")
DISTRIBUTION = "emissions-pipeline"
#: The experiment that carries the submitter's code identity to the workers.
EXPERIMENT = "emissions_code="
BOOT = PROJECT_ROOT / "flink" / "worker-boot"


def code_fingerprint(root: Path = PROJECT_ROOT) -> str:
    """SHA-256 (16 hex digits) of every file of the worker packages under ``root`` (sources,
    factor files), by relative path: equal exactly when the workers would run the same code."""
    digest = hashlib.sha256()
    for package in CODE_PACKAGES:
        files = sorted(
            p
            for p in (root / package).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
        )
        for path in files:
            digest.update(path.relative_to(root).as_posix().encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def project_version() -> str:
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def code_identity(root: Path = PROJECT_ROOT) -> str:
    """``<version>+<fingerprint>``: what a submitter and its workers must share."""
    return f"{project_version()}+{code_fingerprint(root)}"


def job_identity(experiments: Iterable[str]) -> str | None:
    """The submitter's code identity among a job's ``--experiments``, if it carries one."""
    for value in experiments:
        if value.startswith(EXPERIMENT):
            return value[len(EXPERIMENT) :]
    return None


def refusal(experiments: Iterable[str], here: str) -> str | None:
    """Why this worker (code ``here``) must not run a job with ``experiments``; None if it may."""
    submitted = job_identity(experiments)
    if submitted == here:
        return None
    if submitted is None:
        return (
            f"refused: the job does not say which code it was submitted from (this worker "
            f"runs {DISTRIBUTION} {here}); submit with the options 'ops.flink_cluster args' "
            f"prints (--experiments={EXPERIMENT}…)"
        )
    return (
        f"refused: the job was submitted from {DISTRIBUTION} {submitted}, this worker runs "
        f"{here}; install the same code on the submitting machine and every TaskManager host "
        f"(this one's: {PROJECT_ROOT})"
    )


class JobRefused(RuntimeError):
    """A worker's refusal of a job from other code, as the job's error."""


def refuse_every_bundle(line: str) -> None:
    """Makes this process's SDK harness fail every bundle with ``line``, before it loads any
    of the job's code (a bundle's DoFns are unpickled when it is processed, not when it is
    registered). The runner fails the job with the harness's error, which reaches the
    submitter; a worker that only exited would leave it "Process died with exit code 3".
    The bundle's data streams are opened first: the runner waits for them (3 minutes) before
    it reads the bundle's answer."""
    from apache_beam.portability.api import beam_fn_api_pb2
    from apache_beam.runners.worker import bundle_processor, sdk_worker

    data_urns = (bundle_processor.DATA_INPUT_URN, bundle_processor.DATA_OUTPUT_URN)

    def refuse(self: sdk_worker.SdkWorker, request: Any, instruction_id: str) -> Any:
        cache = self.bundle_processor_cache
        descriptor = cache.fns[request.process_bundle_descriptor_id]
        for transform in descriptor.transforms.values():
            if transform.spec.urn in data_urns:
                port = beam_fn_api_pb2.RemoteGrpcPort.FromString(transform.spec.payload)
                cache.data_channel_factory.create_data_channel(port)
        raise JobRefused(line)

    sdk_worker.SdkWorker.process_bundle = refuse  # type: ignore[method-assign]


def provision_info(endpoint: str, worker_id: str) -> object:
    """The job's ``ProvisionInfo`` (options, endpoints) from the TaskManager's provision service."""
    import grpc
    from apache_beam.portability.api import beam_provision_api_pb2, beam_provision_api_pb2_grpc

    with grpc.insecure_channel(endpoint) as channel:
        stub = beam_provision_api_pb2_grpc.ProvisionServiceStub(channel)
        response = stub.GetProvisionInfo(
            beam_provision_api_pb2.GetProvisionInfoRequest(),
            metadata=[("worker_id", worker_id)],
            timeout=60,
        )
    return response.info


def harness_environment(info: object, worker_id: str) -> dict[str, str]:
    """The variables Beam's boot binary hands ``sdk_worker_main``."""
    from google.protobuf import json_format, text_format

    env = {
        "WORKER_ID": worker_id,
        "PIPELINE_OPTIONS": json_format.MessageToJson(info.pipeline_options),  # type: ignore[attr-defined]
        "LOGGING_API_SERVICE_DESCRIPTOR": text_format.MessageToString(info.logging_endpoint),  # type: ignore[attr-defined]
        "CONTROL_API_SERVICE_DESCRIPTOR": text_format.MessageToString(info.control_endpoint),  # type: ignore[attr-defined]
        "RUNNER_CAPABILITIES": " ".join(info.runner_capabilities),  # type: ignore[attr-defined]
    }
    if info.HasField("status_endpoint"):  # type: ignore[attr-defined]
        env["STATUS_API_SERVICE_DESCRIPTOR"] = text_format.MessageToString(info.status_endpoint)  # type: ignore[attr-defined]
    return env


def experiments_of(pipeline_options_json: str) -> list[str]:
    """The ``--experiments`` of a job's options as the provision service gives them."""
    options = json.loads(pipeline_options_json)
    options = options.get("options", options)
    for key in ("experiments", "beam:option:experiments:v1"):
        if key in options:
            return [str(v) for v in options[key] or []]
    return []


def report(info: object, line: str) -> None:
    """``line`` on stderr and, through the job's logging service, in the TaskManager's log
    (a TaskManager discards its workers' own output)."""
    print(f"error: {line}", file=sys.stderr, flush=True)
    from apache_beam.runners.worker.log_handler import FnApiLogRecordHandler

    handler = FnApiLogRecordHandler(info.logging_endpoint)  # type: ignore[attr-defined]
    logger = logging.getLogger("ops.flink_worker")
    logger.addHandler(handler)
    try:
        logger.error(line)
    finally:
        logger.removeHandler(handler)
        handler.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="flink/worker-boot", description=__doc__)
    parser.add_argument("--id", required=True, help="the worker id the TaskManager gives")
    parser.add_argument("--provision_endpoint", required=True, help="host:port")
    args, _ = parser.parse_known_args(argv)  # Beam may pass more endpoints: provision has all
    info = provision_info(args.provision_endpoint, args.id)
    env = harness_environment(info, args.id)
    why = refusal(experiments_of(env["PIPELINE_OPTIONS"]), code_identity())
    if why:
        report(info, f"worker {args.id} {why}")
        refuse_every_bundle(f"worker {args.id} {why}")
    os.environ.update(env)
    from apache_beam.runners.worker import sdk_worker_main

    sdk_worker_main.main([])
    return 0


if __name__ == "__main__":
    sys.exit(main())
