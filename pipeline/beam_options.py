"""The calculation's options as a Beam ``PipelineOptions`` subclass.

Registering them lets Beam accept them next to its own (``--runner``, ``--flink_master``, …)
and hand them to runners that ship options to workers; they are declared once, in
``pipeline.options.add_arguments``.
"""

from __future__ import annotations

import argparse

from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.options import add_arguments


class EmissionsOptions(PipelineOptions):
    """Options of the emissions calculation (Beam's own options are accepted alongside)."""

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        add_arguments(parser)
