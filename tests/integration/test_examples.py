"""The first-generation usage block (examples/usage.py) runs as written against the real broker."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_usage_block_runs(kafka_broker, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "usage.py"),
            "--bootstrap-servers",
            kafka_broker.bootstrap,
            "--batches",
            "8",
            "--prefix",
            uuid.uuid4().hex[:8],
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    sent = int(result.stdout.strip().splitlines()[-1].split()[1])
    assert sent >= 8  # two cameras, eight batches: most slots hold a frame
    assert not (tmp_path / "pid").exists()
