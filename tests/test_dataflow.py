"""The Dataflow submission documented in docs/flink.md, built but never submitted.

Constructs the exact options of the documented command, lets Beam's DataflowRunner validate
them, builds the graph and serialises it to the runner API, as a submission would; nothing
connects to Google Cloud or to the database.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import (
    GoogleCloudOptions,
    PipelineOptions,
    SetupOptions,
    StandardOptions,
    WorkerOptions,
)
from apache_beam.runners.dataflow.dataflow_runner import DataflowRunner

from pipeline import graph
from pipeline.beam_options import EmissionsOptions
from pipeline.model import ACTIVITY_TYPES
from pipeline.options import validate
from pipeline.ranges import plan_int_ranges
from transforms.calculate import ERRORS

ROOT = Path(__file__).resolve().parent.parent

# The command in docs/flink.md, as argv (placeholders filled in).
DATAFLOW_ARGV = [
    "--runner=DataflowRunner",
    "--project=my-gcp-project",
    "--region=europe-west1",
    "--temp_location=gs://my-emissions-bucket/tmp",
    "--staging_location=gs://my-emissions-bucket/staging",
    f"--setup_file={ROOT / 'setup.py'}",
    "--job_name=emissions-calculation",
    "--max_num_workers=8",
    "--subnetwork=regions/europe-west1/subnetworks/emissions",
    "--no_use_public_ips",
    "--database-url=postgresql://emissions:secret@10.10.0.5:5432/emissions",
    "--partitions=32",
]


def test_dataflow_options_and_graph_build_without_submitting(
    request: pytest.FixtureRequest,
) -> None:
    options = PipelineOptions(DATAFLOW_ARGV)
    assert options.view_as(StandardOptions).runner == "DataflowRunner"
    gcp = options.view_as(GoogleCloudOptions)
    assert (gcp.project, gcp.region) == ("my-gcp-project", "europe-west1")
    setup = options.view_as(SetupOptions)
    assert setup.setup_file == str(ROOT / "setup.py") and Path(setup.setup_file).is_file()
    assert not setup.save_main_session  # the code ships as a package, not a pickled session
    assert options.view_as(WorkerOptions).max_num_workers == 8

    config = validate(options.view_as(EmissionsOptions), None)
    assert config.partitions == 32

    # The Pipeline constructor runs the DataflowRunner's option validation (GCS paths, project).
    p = beam.Pipeline(runner=DataflowRunner(), options=options)
    # It also makes a temp folder, which only running the pipeline removes: this test's own.
    request.addfinalizer(lambda: shutil.rmtree(p.local_tempdir, ignore_errors=True))
    # The launcher plans the ranges (from the database); here, 32 slices of each type's keys.
    ranges = [r for t in ACTIVITY_TYPES for r in plan_int_ranges(t, 1, 1_000_000, 32)]
    outputs = graph.build(p, config, ranges)
    assert isinstance(outputs.results, beam.PCollection)
    assert isinstance(outputs[ERRORS], beam.PCollection)

    proto = p.to_runner_api()
    labels = {t.unique_name for t in proto.components.transforms.values()}
    for label in (
        "ReadFactors",
        "ReadPending/Ranges",
        "ReadPending/ReadRange",
        "Calculate/Calculate",
        "WriteResults/WriteBatches",
        "WriteErrors/WriteBatches",
    ):
        assert label in labels, label
