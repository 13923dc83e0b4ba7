"""The process settings: applied once, and the pandas finder changes nothing but the speed."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from pipeline import tuning


def pandas_installed() -> bool:
    try:
        return importlib.util.find_spec("pandas") is not None
    except ModuleNotFoundError:  # the finder under test: installed only when pandas is not
        return False


def test_settings_are_applied_once_and_arrows_once_it_is_loaded() -> None:
    import pyarrow  # noqa: F401 - the Arrow setting waits for Arrow

    tuning.tune_process()
    tuning.tune_process()
    assert {
        "release_heap_memory_promptly",
        "no_repeated_pandas_imports",
        "release_arrow_memory_promptly",
    } <= tuning._DONE
    finders = [f for f in sys.meta_path if isinstance(f, tuning._Absent)]
    assert len(finders) == (0 if pandas_installed() else 1)  # however often it is called


@pytest.mark.skipif(pandas_installed(), reason="pandas is installed here")
def test_without_pandas_its_import_fails_as_before_and_arrow_works() -> None:
    # A fresh interpreter: the finder is process-wide.
    code = """
import pyarrow as pa, pyarrow.compute as pc
from pipeline import tuning
tuning.tune_process()
try:
    import pandas
except ModuleNotFoundError as e:
    print("absent", e.name)
t = pa.table({"x": [1.0, None, 3.0]})
print(pc.sum(pc.fill_null(t.column("x"), 0)).as_py(), t.to_pylist()[1])
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split("\n")
    assert out[:2] == ["absent pandas", "4.0 {'x': None}"]
