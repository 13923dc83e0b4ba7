"""Packaging: ``pip install .`` installs the three wings (the core, the audit and the
operations tools) and the ``emissions`` command; Beam's ``--setup_file`` ships the core alone.

Beam builds an sdist of this file for remote workers (``python setup.py sdist``, or
``python -m build --sdist`` when ``build`` is installed). Workers need only the calculation,
``pipeline`` and ``transforms``: ``pipeline.run`` sets ``$EMISSIONS_PACKAGE=core`` before Beam
stages anything, and an sdist built so (or a tree without the tools, as the workers unpack it)
is the distribution ``emissions-pipeline-core``, the core alone.
"""

import os
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = "0.2.0"

#: What workers run: the calculation and its composites.
CORE = ["pipeline", "pipeline.*", "transforms", "transforms.*"]
#: What people run: the tools around the calculation, and the ``emissions`` command.
TOOLS = ["audit", "audit.*", "ops", "ops.*", "emissions", "emissions.*"]


def _requirements() -> list[str]:
    lines = (HERE / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _core_only() -> bool:
    asked = os.environ.get("EMISSIONS_PACKAGE", "") == "core"
    return asked or not (HERE / "emissions" / "cli.py").is_file()


CORE_ONLY = _core_only()

setup(
    # The core has a name of its own: setuptools adds the files its egg-info lists from an
    # earlier build to the next sdist, and the workers' must never take the tools' files.
    name="emissions-pipeline-core" if CORE_ONLY else "emissions-pipeline",
    version=VERSION,
    description="Apache Beam pipeline computing GHG emissions (kg CO2e) of activity records.",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    packages=find_packages(include=CORE if CORE_ONLY else [*CORE, *TOOLS]),
    package_data={
        "pipeline": ["data/*.csv", "data/*.md"],
        "pipeline.store.migrations": ["script.py.mako"],
    },
    include_package_data=True,
    python_requires=">=3.10",
    install_requires=_requirements(),
    entry_points={} if CORE_ONLY else {"console_scripts": ["emissions = emissions.cli:main"]},
)
