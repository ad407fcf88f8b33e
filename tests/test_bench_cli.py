"""bench/cli.py: a bench suite run from the command line says a user error in one line and exits with its code;
a bug keeps its traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli import cli_exit
from l2o.errors import RunFailed, UserError

ROOT = Path(__file__).resolve().parents[1]


def _raise(err):
    def body():
        raise err
    return body


def test_a_user_error_is_one_line_and_its_exit_code(capsys):
    assert cli_exit("bench.x", _raise(UserError("the panel is empty"))) == 2
    assert capsys.readouterr().err == "bench.x: error: the panel is empty\n"
    assert cli_exit("bench.x", _raise(RunFailed("the disk is full"))) == 1
    assert cli_exit("bench.x", lambda: {"summary": 1}) == 0 and cli_exit("bench.x", lambda: 3) == 3
    with pytest.raises(KeyError):  # a bug is not a user error
        cli_exit("bench.x", _raise(KeyError("k")))


def test_a_damaged_runs_file_stops_a_suite_in_one_line(tmp_path):
    suite = "bench.learnability"  # one subprocess; the other suites' entries are the same one line
    (tmp_path / "runs.jsonl").write_text('{"a": 1}\nnot json\n{"b": 2}\n')
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", suite, "--out", str(tmp_path), "--report"], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "forward of" not in proc.stdout  # refused before the base loads
    assert proc.stderr.strip().splitlines()[-1] == (f"{suite}: error: {tmp_path / 'runs.jsonl'} line 2 is not a JSON "
                                                   "record (the file is damaged there); remove that line and its run "
                                                   "reruns")
