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


def test_ctrl_c_is_one_line_and_exit_130(capsys):
    """A suite interrupted in a fine-tuning run (RunInterrupted, whose own advice, --resume, is fine_tune's) or
    between runs says in one line that the same command continues; no traceback."""
    from bench.cli import CONTINUES
    from l2o.integrations.lightning.folder import RunInterrupted

    for err in (RunInterrupted("interrupted; continue with --resume (checkpoint x/last.ckpt)"), KeyboardInterrupt()):
        assert cli_exit("bench.x", _raise(err)) == 130
        assert capsys.readouterr().err == f"bench.x: interrupted; {CONTINUES}\n"
        assert cli_exit("bench.x", _raise(err), resumable=False) == 130  # a measurement keeps no runs.jsonl
        assert capsys.readouterr().err == "bench.x: interrupted\n"


def test_sigterm_between_runs_stops_a_suite_as_ctrl_c_does_and_exits_143():
    """A scheduler's SIGTERM (preemption, a time limit) reaching a suite outside a fine-tuning run: the same one
    line as Ctrl-C, naming the signal, exit 143 (128 + 15). Python's default would kill it where it stood
    (returncode -15), before a run's CPU meter or its folder's clean-up were written."""
    code = ("import os, signal, time\n"
            "from bench.cli import cli_exit\n"
            "def body():\n"
            "    os.kill(os.getpid(), signal.SIGTERM)\n"
            "    time.sleep(30)\n"
            "raise SystemExit(cli_exit('bench.x', body))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 143, proc.stderr[-2000:]
    assert proc.stderr == ("bench.x: stopped by SIGTERM; the same command continues (the runs its runs.jsonl records "
                           "are not run again)\n")


@pytest.mark.parametrize("bench", ["compare_policy", "es_snr", "fo_memory", "fo_step_memory", "head_bench",
                                   "loss_bias"])
def test_a_measurement_run_as_a_script_says_a_bad_task_in_one_line(bench):
    """`python bench/<name>.py --task <unknown>`, from outside the repository as docs/benchmarks.md runs them: one
    line naming the bench and the known tasks, exit 2, no traceback (BIG-bench tasks missing their files are
    refused the same way: zoo.acquire's TaskError)."""
    flag = "--tasks" if bench == "loss_bias" else "--task"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / f"{bench}.py"), flag, "no_such_task"], cwd="/",
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(f"bench.{bench}: error: unknown task 'no_such_task'; known")


@pytest.fixture
def sigterm_handler_kept():
    """bench.evidence's main installs its SIGTERM handler (l2o/stop.py) in this process: put the old one back."""
    import signal

    before = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, before)


@pytest.mark.parametrize("stops_by_itself, sig", [(True, "SIGINT"), (False, "SIGINT"), (True, "SIGTERM")])
def test_ctrl_c_stops_the_evidence_suites_second_process_too(tmp_path, monkeypatch, capsys, sigterm_handler_kept,
                                                             stops_by_itself, sig):
    """The terminal's Ctrl-C reaches both processes and the second stops by itself (a second Ctrl-C would stop its
    run unsaved: none is sent); signalled alone, the first sends it one after the grace period. Either way it
    waits for it, and says in one line that the same command continues. A scheduler's SIGTERM is said so, exit 143."""
    import signal
    import subprocess

    from bench import evidence
    from bench.cli import CONTINUES
    from l2o.stop import interrupt

    class Child:
        pid, signals = 4242, []

        def wait(self, timeout=None):
            if timeout is not None and not stops_by_itself:
                raise subprocess.TimeoutExpired("bench.evidence", timeout)
            return 130

        def send_signal(self, sig):
            self.signals.append(sig)

    child = Child()
    monkeypatch.setattr(evidence, "spawn", lambda argv: child)

    def interrupted(args, phase):
        raise interrupt(getattr(signal, sig)) if sig != "SIGINT" else KeyboardInterrupt

    monkeypatch.setattr(evidence, "run_phase", interrupted)
    argv = ["--out", str(tmp_path / "out"), "--docs", str(tmp_path / "docs"), "--workers", "2", "--phases",
            "prefix,full"]
    assert evidence.main(argv) == (130 if sig == "SIGINT" else 143)
    err = capsys.readouterr().err
    said = "interrupted" if sig == "SIGINT" else "stopped by SIGTERM"
    assert err.endswith(f"bench.evidence: {said}; {CONTINUES}\n") and "Traceback" not in err
    assert child.signals == ([] if stops_by_itself else [signal.SIGINT])
    assert not (tmp_path / "docs" / "evidence.md").exists()  # the doc is the finished suite's


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


@pytest.mark.parametrize("argv, said", [
    (["--meta-steps", "zo=abc"], "unknown kind(s) zo in --meta-steps; kinds: zo-finetuner, bilevel-zofo"),  # traceback
    (["--meta-steps", "zo-finetuner=abc"], "--meta-steps takes integers >= 1 (N or kind=N,...), got 'abc'"),
    (["--max-median", "48,x"], "--max-median must be comma-separated integers, got '48,x'"),
    (["--workers", "3"], "--workers 3: 1 or 2 (the suite has two lanes; the issue's machine has two cores)"),
    (["--cpu-hours", "-1"], "--cpu-hours must be a positive number of CPU-hours, got -1"),  # kept as the budget
])
def test_the_evidence_suites_bad_options_are_one_line_not_usage_or_a_traceback(argv, said, tmp_path, capsys):
    from bench import evidence

    with pytest.raises(SystemExit) as stop:
        evidence.main(["--out", str(tmp_path / "out"), "--docs", str(tmp_path / "docs"), *argv])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"bench.evidence: error: {said} (see `python -m bench.evidence --help`)"], err


def test_compare_policy_names_its_own_flag_and_refuses_an_aggregate_of_nothing(tiny_base, tmp_path, capsys):
    """--forwards below one step was refused as "--steps must be a positive integer" (a flag it does not have);
    --aggregate of a missing folder printed an empty table, exit 0."""
    from bench import compare_policy

    argv = ["--methods", "mezo", "--base", tiny_base, "--task", "sst2", "--seeds", "0", "--forwards", "1",
            "--out", str(tmp_path / "cp")]
    assert cli_exit("bench.compare_policy", lambda: compare_policy.main(argv), resumable=False) == 2
    assert capsys.readouterr().err.strip() == ("bench.compare_policy: error: --forwards 1 is less than one step of "
                                               "mezo (2 forward passes)")
    missing = tmp_path / "nothere"
    assert cli_exit("bench.compare_policy", lambda: compare_policy.main(["--aggregate", "--out", str(missing)]),
                    resumable=False) == 2
    assert capsys.readouterr().err.strip() == (f"bench.compare_policy: error: --aggregate: no run folder {missing} "
                                               "(give the --out of a comparison)")



SUITES = sorted(p.stem if p.stem != "__main__" else p.parent.name
                for p in [*(ROOT / "bench").glob("*.py"), ROOT / "bench" / "reproduce" / "__main__.py"]
                if "\ndef main(argv" in p.read_text())


@pytest.mark.parametrize("suite", SUITES)
def test_every_suites_flag_refusals_are_one_line_naming_how_to_get_help(suite, capsys):
    """argparse's own refusals (an unknown flag) print its whole usage first; every bench suite and measurement
    says them in one line, as their UserErrors, through l2o.errors.OneLineParser (bench.cli.Parser)."""
    import importlib

    module = importlib.import_module(f"bench.{suite}" if suite != "reproduce" else "bench.reproduce.__main__")
    with pytest.raises(SystemExit) as stop:
        module.main(["--no-such-flag"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"bench.{suite}: error: unrecognized arguments: --no-such-flag "
                   f"(see `python -m bench.{suite} --help`)"], err


def test_a_subcommands_refusal_names_the_program_and_the_subcommands_help(capsys):
    """A subcommand's parser (argparse makes it of its parent's class) says it as its program, and points at the
    subcommand's own help."""
    from zoo.cli import main as zoo

    assert zoo(["download"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "zoo: error: the following arguments are required: ID[@VERSION] (see `zoo download --help`)"]
