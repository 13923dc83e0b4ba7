"""Packaging, so that Beam can ship this code to remote workers (``--setup_file``)."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def _requirements() -> list[str]:
    lines = (HERE / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


setup(
    name="emissions-pipeline",
    version="0.1.0",
    description="Apache Beam pipeline computing GHG emissions (kg CO2e) of activity records.",
    packages=find_packages(include=["pipeline", "pipeline.*", "transforms", "transforms.*"]),
    package_data={"pipeline": ["data/*.csv", "data/*.md"]},
    include_package_data=True,
    python_requires=">=3.10",
    install_requires=_requirements(),
)
