"""``comux bench``: where the suite is found, what it says without one, the output folder."""

from __future__ import annotations

import argparse
import json
import textwrap
from pathlib import Path

import pytest

from comux.bench import OUT_ENV, find_benchmarks, run_bench


def args(**given: object) -> argparse.Namespace:
    base = {"long": False, "out": None, "benchmarks": None, "k": None, "no_plot": False}
    return argparse.Namespace(**{**base, **given})


def fake_suite(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for name, text in FAKE.items():
        (folder / name).write_text(textwrap.dedent(text))
    return folder


def test_the_checkouts_benchmarks_are_found_next_to_the_package(tmp_path, monkeypatch):
    suite = fake_suite(tmp_path / "benchmarks")
    monkeypatch.setattr("comux.bench.__file__", str(tmp_path / "comux" / "bench.py"))
    assert find_benchmarks() == suite
    assert find_benchmarks(tmp_path) == suite  # the checkout's root will do
    assert find_benchmarks(suite) == suite


def test_without_the_suite_it_says_where_it_ships(tmp_path, monkeypatch, capsys):
    assert run_bench(args(benchmarks=str(tmp_path))) == 1
    assert "is not comux's benchmarks folder" in capsys.readouterr().err
    monkeypatch.setattr("comux.bench.find_benchmarks", lambda given=None: None)
    assert run_bench(args()) == 1
    err = capsys.readouterr().err
    assert "not installed with the package" in err and "--benchmarks PATH" in err


# A stand-in suite: writes where COMUX_BENCH_OUT says, and plot.py writes the PNG it is given.
FAKE = {
    "conftest.py": """
        def pytest_addoption(parser):
            parser.addoption("--long", action="store_true", default=False)
        """,
    "_common.py": "",
    "plot.py": """
        import sys
        from pathlib import Path
        out = Path(sys.argv[sys.argv.index("--output") + 1])
        out.write_bytes(b"png")
        """,
    "test_fake_bench.py": """
        import json, os
        from pathlib import Path
        def test_e2e(request, benchmark):
            benchmark.pedantic(lambda: None, rounds=1)
            long = request.config.getoption("--long")
            name = "end_to_end-long.json" if long else "end_to_end.json"
            Path(os.environ["COMUX_BENCH_OUT"], name).write_text(json.dumps({"long": long}))
        """,
}


@pytest.mark.parametrize("long", [False, True])
def test_results_and_plots_go_to_the_out_folder(tmp_path, monkeypatch, long):
    suite = fake_suite(tmp_path / "src" / "benchmarks")
    monkeypatch.setattr("comux.bench._missing", lambda modules: [])  # the stand-in plots alone
    monkeypatch.delenv(OUT_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    assert run_bench(args(benchmarks=str(suite), long=long)) == 0
    out = tmp_path / "comux-bench"  # the default: ./comux-bench
    name = "end_to_end-long.json" if long else "end_to_end.json"
    assert json.loads((out / name).read_text()) == {"long": long}
    assert (out / "fps_vs_cameras.png").read_bytes() == b"png"
    assert (out / "pytest-benchmark.json").is_file()
