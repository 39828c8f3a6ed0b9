"""Benchmark options and fixtures.

Short mode (default, for CI: the whole folder in about two minutes on two cores)::

    pytest benchmarks --benchmark-enable

Long mode (by hand, several minutes)::

    pytest benchmarks --benchmark-enable --long        # or COMUX_BENCH=long pytest benchmarks ...

Every run writes its JSON to ``benchmarks/results/latest/`` (``_common.RESULTS_DIR``; untracked,
so a run never changes the checkout); the tracked long-run results that README.md quotes are in
``benchmarks/results/reference/``.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable

import pytest

from benchmarks._common import Results, is_long
from tests.fixtures_kafka import kafka_broker  # noqa: F401  (session fixture: a real broker)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("comux benchmarks")
    group.addoption(
        "--long",
        action="store_true",
        default=False,
        help="run the long benchmark mode (more cases, cameras, frames and rounds); "
        "same as COMUX_BENCH=long",
    )


def pytest_report_header(config: pytest.Config) -> str:
    return f"comux benchmarks: {'LONG' if is_long(config) else 'short'} mode"


@pytest.fixture(scope="session")
def long_mode(pytestconfig: pytest.Config) -> bool:
    return is_long(pytestconfig)


@pytest.fixture(scope="session")
def results(pytestconfig: pytest.Config) -> Callable[[str], Results]:
    """``results(name)``: the (one per session) JSON results file of a benchmark module."""
    files: dict[str, Results] = {}
    command = shlex.join([sys.executable, "-m", "pytest", *pytestconfig.invocation_params.args])

    def get(name: str) -> Results:
        if name not in files:
            files[name] = Results(name, is_long(pytestconfig), command)
        return files[name]

    return get
