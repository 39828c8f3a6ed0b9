"""The C ring under AddressSanitizer+UBSan and ThreadSanitizer, with two real threads."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "tests" / "c" / "ring_stress.c"
INCLUDE = ROOT / "comux" / "_ext"


@pytest.mark.parametrize(
    "flags", [["-fsanitize=address,undefined"], ["-fsanitize=thread"]], ids=["asan", "tsan"]
)
def test_ring_is_clean_under_sanitizers(tmp_path, flags):
    cc = shutil.which("gcc") or shutil.which("cc")
    assert cc, "a C compiler is needed (the package itself needs one to build)"
    binary = tmp_path / "ring_stress"
    subprocess.run(
        [
            cc,
            "-std=gnu11",
            "-O1",
            "-g",
            "-Wall",
            "-Wextra",
            "-Werror",
            *flags,
            f"-I{INCLUDE}",
            str(SOURCE),
            "-o",
            str(binary),
            "-lpthread",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    run = subprocess.run([str(binary)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip() == "bad=0"
    assert "Sanitizer" not in run.stderr
