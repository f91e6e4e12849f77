"""Stopping on request (alad/stopping.py): a time box and a SIGTERM during training are requests
that a run honours at its next save point; the CLI exits 143 after a SIGTERM with its state
saved. A SIGTERM outside training stops at once (tests/test_reliability_runtime.py, black box)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from alad import stopping


def test_a_deadline_is_a_request_inside_its_block_only():
    assert stopping.requested() is None
    with stopping.deadline(None):
        assert stopping.requested() is None
    with stopping.deadline(60):
        assert stopping.requested() is None  # an hour left
        with stopping.deadline(0):
            assert stopping.requested() == "the time box"
        assert stopping.requested() is None  # the outer box again
    assert stopping.requested() is None


def test_sigterm_in_a_deferring_section_is_a_request_and_a_second_one_kills():
    before = signal.getsignal(signal.SIGTERM)
    # Still pending when the (outer, of two nested) section ends: Terminated then.
    with (
        stopping.handle_sigterm(),
        pytest.raises(stopping.Terminated),
        stopping.deferring(),
        stopping.deferring(),
    ):
        assert stopping.requested() is None
        os.kill(os.getpid(), signal.SIGTERM)
        assert stopping.requested() == "SIGTERM"
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the next one kills
    assert stopping.requested() is None
    assert signal.getsignal(signal.SIGTERM) is before


def test_sigterm_outside_a_deferring_section_stops_at_once():
    with stopping.handle_sigterm(), pytest.raises(stopping.Terminated) as info:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)  # never reached: the handler raises
    assert info.value.exit_code == 143 and "stopped by SIGTERM" in str(info.value)


def test_a_deferring_section_stopped_at_its_save_point_raises_only_that():
    with stopping.handle_sigterm(), pytest.raises(stopping.Stopped), stopping.deferring():
        os.kill(os.getpid(), signal.SIGTERM)
        raise stopping.stop(stopping.requested(), "a test", Path("somewhere"))


def test_sigterm_stops_the_cli_with_its_phase3_state_saved(tiny_grid, tmp_path):
    """Black box: `alad sweep run` on a cell long enough to be caught training; a SIGTERM ends
    it after the batch it is in, with the resume state written and exit code 143."""
    grid = yaml.safe_load(tiny_grid.read_text())
    grid["set"]["phase3.epochs"] = 100  # 2,400 batches: still training when the signal comes
    grid["set"]["phase3.batch_size"] = 1
    grid["seeds"] = [1]
    tiny_grid.write_text(yaml.safe_dump(grid))
    root = str(Path(__file__).resolve().parents[1])  # this checkout's alad, not an installed one
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": path}
    cmd = [sys.executable, "-m", "alad.cli", "sweep", "run", str(tiny_grid), "-q"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    lines = []
    for line in proc.stderr:  # the log: phase 3's set-up line comes just before its training
        lines.append(line)
        if "phase 3: pos/" in line:
            proc.send_signal(signal.SIGTERM)
            break
    rest = proc.communicate(timeout=120)[1]
    assert proc.returncode == 143, "".join(lines) + rest
    assert "stopped by SIGTERM" in rest and "rerun the same command to resume" in rest, rest
    assert "Traceback" not in rest, rest
    states = list((tmp_path / "runs").rglob("state/state.pt"))
    assert len(states) == 1
    assert not list((tmp_path / "results").rglob("*.json"))  # the cell is not finished
