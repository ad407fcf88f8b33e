"""Nothing lost when a run fails from outside: Ctrl-C, a full disk, a damaged checkpoint (one fine_tune
run, uninterrupted, is the reference each interrupted and resumed run must end equal to, byte for byte)."""

import errno
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from fine_tune.cli import main
from l2o.filelock import write_atomic
from tests.helpers import same_threads_env
from tests.test_fine_tune import ROOT, _args, _trainable

COMMON = ["--steps", "6", "--save-every", "2", "--lr", "1e-3", "--save-model", "false", "--zero-shot", "false"]


@pytest.fixture(scope="module")
def reference(tiny_base, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("reference") / "run"
    assert main(_args(tiny_base, out, *COMMON)) == 0
    return out


def _assert_same_run(a, b):
    """Bit-identical trained weights and a byte-identical seed ledger."""
    x, y = (_trainable(d / "checkpoints" / "last.ckpt") for d in (a, b))
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    assert (a / "ledger.jsonl").read_bytes() == (b / "ledger.jsonl").read_bytes()


def _in_subprocess(helper: str, *args):
    """`helper(*args)` in a subprocess on this process's threads (the reference run is made here)."""
    code = f"from tests.helpers import {helper} as f; f{args!r}"
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=same_threads_env())


@pytest.mark.parametrize("sig, code, how", [("SIGINT", 130, "interrupted"), ("SIGTERM", 143, "stopped by SIGTERM")])
def test_ctrl_c_between_checkpoints_resumes_to_the_uninterrupted_run_byte_for_byte(tiny_base, reference, tmp_path,  # noqa: F811
                                                                                   sig, code, how):
    """Ctrl-C, or a scheduler's SIGTERM (preemption, a time limit: l2o/stop.py), finishes the step, saves it and
    stops; --resume then ends equal to the run nothing stopped. Without SIGTERM's handling the process died where
    it stood, and the steps since the periodic checkpoint were lost."""
    out = tmp_path / "run"
    proc = _in_subprocess("run_fine_tune_interrupted_at", 3, _args(tiny_base, out, *COMMON), sig)
    assert proc.returncode == code, proc.stderr[-2000:]
    last = out / "checkpoints" / "last.ckpt"
    assert proc.stderr.strip().splitlines()[-1] == f"fine_tune: {how}; continue with --resume (checkpoint {last})"
    assert "Traceback" not in proc.stderr and "weights_only" not in proc.stderr
    assert not (out / "results.json").exists()
    # the interrupt's checkpoint, after the step it came in (the periodic one was at step 2), and only one
    assert torch.load(last, weights_only=True)["global_step"] == 3
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]

    assert main(_args(tiny_base, out, *COMMON, "--resume")) == 0
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]
    _assert_same_run(out, reference)  # no seal of the interrupt's checkpoint left in the ledger


def test_start_and_resume_remove_the_temp_files_a_killed_write_left_and_say_so(tiny_base, tmp_path, capsys):  # noqa: F811
    """A kill -9 during the first checkpoint's write (start) or a later one (resume) leaves write_atomic's temp file."""
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "my-notes.tmp").write_text("mine")
    for stale, resume in [(out / "checkpoints" / ".tmp-last.ckpt-0a1b2c3d4e5f", []),
                          (out / ".tmp-ledger.jsonl-ffffffffffff", ["--resume"])]:
        stale.write_bytes(b"half a checkpoint")
        assert main(_args(tiny_base, out, *COMMON, *resume)) == 0
        assert not stale.exists() and (out / "checkpoints" / "my-notes.tmp").read_text() == "mine"
        assert f"removed 1 stale temp file(s) that an interrupted write left in {out}" in capsys.readouterr().err


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs, to fill (needs root and the permission to mount; skipped where either is missing)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)]
    if shutil.which("mount") is None or subprocess.run(mount, capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root and mount permission)")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=True)


def test_a_full_disk_keeps_the_last_checkpoint_and_resume_ends_as_the_uninterrupted_run(
        tiny_base, reference, small_disk):  # noqa: F811
    out, filler = small_disk / "run", small_disk / "filler"
    proc = _in_subprocess("run_fine_tune_filling_disk_at", 3, str(filler), _args(tiny_base, out, *COMMON))
    assert proc.returncode == 1, proc.stderr[-2000:]
    last = out / "checkpoints" / "last.ckpt"
    assert proc.stderr.strip().splitlines()[-1] == (
        f"fine_tune: error: cannot write {last} (No space left on device); the last checkpoint {last} (step 2) is "
        "intact: free space, then continue with --resume")
    assert "Traceback" not in proc.stderr
    assert torch.load(last, weights_only=True)["global_step"] == 2  # step 4's checkpoint did not fit
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]  # no temp file left behind

    filler.unlink()  # the disk has room again
    assert main(_args(tiny_base, out, *COMMON, "--resume")) == 0
    _assert_same_run(out, reference)


@pytest.mark.parametrize("app", ["fine_tune", "meta_train"])
def test_a_full_disk_after_the_last_step_is_one_line_and_resume_finishes(tiny_base, tmp_path, monkeypatch, capsys,  # noqa: F811
                                                                         app):
    """A disk that fills once training is done, as the run writes its plot (fine_tune) or its artefact (meta_train),
    was a traceback (the failure handling covered only the fit): it is the full disk's one line, naming the
    checkpoint --resume finishes the run from."""
    from meta_train.cli import main as meta_train
    from tests.test_meta_resume import _args as meta_args

    out = tmp_path / "run"
    one_step = ["--max_steps", "1", "--model.val_every", "0"]
    argv, run, target, where = {
        "fine_tune": (_args(tiny_base, out, *COMMON), main, out / "loss.png", "fine_tune.run.plot_history"),
        "meta_train": (meta_args(tiny_base, out, "lookahead") + one_step, meta_train,
                       out / "policy" / "model.safetensors", "zoo.artefact.save_artefact")}[app]

    def full(*args, **kw):
        raise OSError(errno.ENOSPC, "No space left on device", str(target))

    monkeypatch.setattr(where, full)
    capsys.readouterr()
    assert run(argv) == 1
    err = capsys.readouterr().err
    last = out / "checkpoints" / "last.ckpt"
    assert err.strip().splitlines()[-1] == (
        f"{app}: error: cannot write {target} (No space left on device); the last checkpoint {last} (step "
        f"{torch.load(last, weights_only=True)['global_step']}) is intact: free space, then continue with --resume")
    assert "Traceback" not in err
    monkeypatch.undo()  # the disk has room again
    assert run([*argv, "--resume"]) == 0
    assert (out / "results.json").is_file() and target.is_file()


def test_ctrl_c_during_the_model_export_leaves_no_half_written_model_and_resume_writes_it_whole(
        tiny_base, tmp_path, monkeypatch, capsys):  # noqa: F811
    """--save-model wrote straight into <out>/model, so Ctrl-C (or SIGTERM, a full disk) mid-export left a model/
    that loads as a broken model. It is written into a staging folder and renamed once whole: a stop leaves no
    model/, and the staging folder a `kill -9` left is removed by the resumed run, which writes the model."""
    from fine_tune.module import ZOFineTuneModule
    from l2o.filelock import WRITER_LOCK_SUFFIX

    out = tmp_path / "run"
    argv = _args(tiny_base, out, *[a if a != "false" else "true" for a in COMMON])
    export = ZOFineTuneModule.export

    def stopped_midway(self, path, *args, **kw):
        export(self, path, *args, **kw)  # the weights are written: the tokenizer or base.json would be next
        (path / "config.json").unlink()
        raise KeyboardInterrupt

    monkeypatch.setattr(ZOFineTuneModule, "export", stopped_midway)
    assert main(argv) == 130
    assert "continue with --resume" in capsys.readouterr().err
    assert not (out / "model").exists() and not (out / "results.json").exists()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".tmp-model-")]

    killed = out / ".tmp-model-abcd1234"  # what a kill -9 mid-export leaves: the folder and its lock, unheld
    killed.mkdir()
    (killed / "model.safetensors").write_bytes(b"half")
    killed.with_name(killed.name + WRITER_LOCK_SUFFIX).touch()
    monkeypatch.undo()
    assert main([*argv, "--resume"]) == 0
    assert not killed.exists() and not killed.with_name(killed.name + WRITER_LOCK_SUFFIX).exists()
    assert f"removed 1 stale temp folder(s) .tmp-model-* that an interrupted model export left in {out}" in \
        capsys.readouterr().err
    written = {p.name for p in (out / "model").iterdir()}
    assert {"base.json", "config.json", "model.safetensors", "tokenizer.json"} <= written
    assert (out / "results.json").is_file()
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out / "model")  # whole: it loads


def test_a_truncated_checkpoint_is_refused_in_one_line_naming_the_last_good_one(tiny_base, reference, tmp_path,  # noqa: F811
                                                                              capsys):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    last = out / "checkpoints" / "last.ckpt"
    whole = last.read_bytes()
    last.write_bytes(whole[:40960])  # what a copy cut short by a full disk left
    assert main(_args(tiny_base, out, *COMMON, "--resume")) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"fine_tune: error: the checkpoint {last} is truncated or damaged (40,960 bytes, not a complete "
                   f"torch checkpoint); no intact checkpoint is left in {last.parent}: start the run again in an "
                   "empty --out")

    (last.parent / "best.ckpt").write_bytes(whole)  # an intact checkpoint beside it is named
    assert main(_args(tiny_base, out, *COMMON, "--resume")) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"; the last good one is {last.parent / 'best.ckpt'} (step 6): copy it over last.ckpt to "
                        "resume from there") and len(err.splitlines()) == 1, err


def test_a_failed_atomic_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    target = tmp_path / "last.ckpt"
    target.write_bytes(b"the previous checkpoint")

    def half_then_full(f):
        f.write(b"half of a new one")
        f.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        write_atomic(target, half_then_full)
    assert target.read_bytes() == b"the previous checkpoint" and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    write_atomic(target, lambda f: f.write(b"new"))
    assert target.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_a_plot_copy_that_fails_midway_leaves_the_old_plot(tmp_path, monkeypatch):
    """The reports copy their plots into docs/ with l2o.filelock.copy_atomic: a disk that fills mid-copy leaves the
    previous plot whole (shutil.copyfile would leave half a PNG), and no temp file."""
    from bench.evidence_doc import copy_plot

    src, docs = tmp_path / "new.png", tmp_path / "docs"
    src.write_bytes(b"the new plot" * 1000)
    docs.mkdir()
    (docs / "plot.png").write_bytes(b"the previous plot")

    def half(f_src, f_dst):
        f_dst.write(f_src.read(100))
        f_dst.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("l2o.filelock.shutil.copyfileobj", half)
    with pytest.raises(OSError, match="No space left"):
        copy_plot(src, docs, "plot.png")
    assert (docs / "plot.png").read_bytes() == b"the previous plot" and [p.name for p in docs.iterdir()] == ["plot.png"]
    monkeypatch.undo()
    assert copy_plot(src, docs, "plot.png") == "plot.png" and (docs / "plot.png").read_bytes() == src.read_bytes()


@pytest.fixture(params=["read-only", "full"])
def bad_cache(request, tmp_path, monkeypatch):
    """$L2O_CACHE on a read-only filesystem, or on a full one (a 64 KiB tmpfs filled up); as root these need
    the permission to mount (skipped without it), otherwise the read-only one is a folder without write
    permission."""
    cache = tmp_path / "cache"
    cache.mkdir()
    mounted = False
    if request.param == "read-only" and os.geteuid() != 0:
        cache.chmod(0o555)
    else:
        opts = "ro,size=64k" if request.param == "read-only" else "size=64k"
        mount = ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(cache)]
        if shutil.which("mount") is None or subprocess.run(mount, capture_output=True).returncode != 0:
            pytest.skip(f"cannot mount a {request.param} tmpfs here (needs root and mount permission)")
        mounted = True
        if request.param == "full":
            with open(cache / "filler", "wb", buffering=0) as f, pytest.raises(OSError):
                while f.write(b"\0" * 4096):
                    pass
    monkeypatch.setenv("L2O_CACHE", str(cache))
    monkeypatch.delenv("L2O_BIGBENCH_SDIST", raising=False)  # the sdist goes into the bad cache too
    yield cache
    if mounted:
        subprocess.run(["umount", "-l", str(cache)], check=True)
    else:
        cache.chmod(0o755)


def _one_error_line(capsys, prog: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"{prog}: error: cannot write to the cache folder "), err
    assert err[0].endswith("; set L2O_CACHE to a writable folder with free space"), err
    return err[0]


def test_only_write_failures_inside_the_cache_become_the_cache_s_one_line(tmp_path):
    """A full disk under the cache folder is the cache's problem (CacheError naming it and L2O_CACHE); the same error
    on a file elsewhere (the user's --out, a base folder) is left as it is, naming its own file."""
    import errno

    from l2o.cache import CacheError, writing_cache

    cache = tmp_path / "cache"
    with pytest.raises(CacheError, match=f"cannot write to the cache folder {cache} "):
        with writing_cache(cache):
            raise OSError(errno.ENOSPC, "No space left on device", str(cache / "models" / "x.bin"))
    with pytest.raises(OSError) as err:
        with writing_cache(cache):
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "x.bin"))
    assert not isinstance(err.value, CacheError) and err.value.filename == str(tmp_path / "out" / "x.bin")


def test_a_read_only_or_full_cache_is_one_line_naming_it_in_every_cli(bad_cache, tmp_path, capsys):
    from meta_train.cli import main as meta_train
    from zoo.cli import main as zoo

    # the embedded base is converted into $L2O_CACHE/models on first use
    assert main(["--task", "sst2", "--steps", "1", "--out", str(tmp_path / "ft")]) == 2
    assert f"folder {bad_cache / 'models'} (" in _one_error_line(capsys, "fine_tune")
    assert not (tmp_path / "ft").exists()
    # the BIG-bench task files are fetched into $L2O_CACHE/bigbench on first use (it fails before any source)
    assert meta_train(["--base", "smollm2-135m", "--tasks", "sports_understanding", "--max_steps", "1",
                       "--out", str(tmp_path / "mt")]) == 2
    assert f"folder {bad_cache / 'bigbench'} (" in _one_error_line(capsys, "meta_train")
    assert not (tmp_path / "mt").exists()
    # the zoo downloads into $L2O_CACHE/zoo
    assert zoo(["download", "smollm2-135m/zo-finetuner"]) == 2
    assert f"folder {bad_cache / 'zoo'} (" in _one_error_line(capsys, "zoo")


EVAL = ["--steps", "6", "--save-every", "2", "--eval-every", "2", "--lr", "1e-3", "--save-model", "false",
        "--zero-shot", "false"]


@pytest.fixture(scope="module")
def evaluated_reference(tiny_base, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("evaluated") / "run"
    assert main(_args(tiny_base, out, *EVAL)) == 0
    return out


def _validations(out) -> dict:
    """Every dev/eval/final row the run logged to TensorBoard (its event files, a resumed run's too): tag ->
    [(step, value)] by step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tb"))
    acc.Reload()
    return {tag: sorted((e.step, e.value) for e in acc.Scalars(tag)) for tag in acc.Tags()["scalars"]
            if tag.split("/")[0] in ("dev", "eval", "final")}


@pytest.mark.parametrize("step", [2, 6])
def test_ctrl_c_at_a_validation_step_resumes_with_that_steps_validation(tiny_base, evaluated_reference, tmp_path,  # noqa: F811
                                                                         step):
    """--eval-every = --save-every: Ctrl-C at a validation step stops after the step's checkpoint, before its
    validation, and Lightning's resume took that validation as done: the resumed run's dev/eval rows lacked the
    step's (step 6, the last: Lightning runs no training loop at all). The resumed run now does it first; its rows,
    its best-on-dev choice and its weights equal the uninterrupted run's."""
    out = tmp_path / "run"
    proc = _in_subprocess("run_fine_tune_interrupted_at", step, _args(tiny_base, out, *EVAL))
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == step
    _resumes_to_the_evaluated_reference(tiny_base, out, evaluated_reference)


def _resumes_to_the_evaluated_reference(base, out, reference):
    """`--resume` of `out` ends as the uninterrupted evaluated run: its dev/eval rows, best-on-dev step, weights."""
    assert main(_args(base, out, *EVAL, "--resume")) == 0
    want = _validations(reference)
    assert [s for s, _ in want["dev/accuracy"]] == [1, 3, 5]  # after steps 2, 4, 6 (logged at step - 1)
    assert _validations(out) == want
    best = [json.loads((d / "results.json").read_text())["best_step"] for d in (out, reference)]
    assert best[0] == best[1]
    _assert_same_run(out, reference)


@pytest.mark.parametrize("step, hook", [(2, "on_validation_start"), (6, "on_validation_start"),
                                        (2, "on_validation_epoch_end")])
def test_ctrl_c_during_a_validation_stops_at_its_step_and_the_resumed_run_does_it(tiny_base, evaluated_reference,  # noqa: F811
                                                                                  tmp_path, step, hook):
    """Ctrl-C while the validation after step 2 (or after the last step, 6) runs: the run stops at the step (saved
    before the validation), instead of finishing the validation and running step 3 first (a scheduler's grace
    period is short). In its first batch: the rest is abandoned and not recorded, so the resumed run owes it and
    does it first. After its last batch: it ends, is recorded, and the run stops before step 3. Either way the
    resumed run ends as the uninterrupted run: rows, best-on-dev choice, weights."""
    out = tmp_path / "run"
    proc = _in_subprocess("run_fine_tune_interrupted_at", step, _args(tiny_base, out, *EVAL), "SIGINT", None, hook)
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == step
    record = out / "checkpoints" / "validated.json"
    done = json.loads(record.read_text())["step"] if record.exists() else None
    assert done == (step if hook == "on_validation_epoch_end" else (step - 2 or None))
    _resumes_to_the_evaluated_reference(tiny_base, out, evaluated_reference)


@pytest.mark.parametrize("hook", ["on_validation_start", "on_validation_epoch_end"])
def test_ctrl_c_during_the_validation_of_an_unsaved_step_stops_at_that_step(tiny_base, tmp_path, hook):  # noqa: F811
    """--save-every 4, --eval-every 2: Ctrl-C during the validation after step 2, which has no checkpoint. The
    validation ends (a checkpoint taken half-way through it would not resume), is recorded, and the run stops at
    step 2, saving it there; it no longer runs step 3 first (a scheduler's grace period is short). The resumed run
    ends as the uninterrupted run: rows, best-on-dev choice, weights."""
    argv = [*EVAL, "--save-every", "4", "--lr", "3e-2", "--eps", "1e-2"]  # the later flag wins
    full, out = tmp_path / "full", tmp_path / "run"
    assert main(_args(tiny_base, full, *argv)) == 0
    proc = _in_subprocess("run_fine_tune_interrupted_at", 2, _args(tiny_base, out, *argv), "SIGINT", None, hook)
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
    assert json.loads((out / "checkpoints" / "validated.json").read_text())["step"] == 2
    assert main(_args(tiny_base, out, *argv, "--resume")) == 0
    assert _validations(out) == _validations(full)
    best = [json.loads((d / "results.json").read_text())["best_step"] for d in (out, full)]
    assert best[0] == best[1] == 2, best  # step 2's validation, which the stopped run's best-on-dev never saw
    _assert_same_run(out, full)


@pytest.mark.parametrize("checkpoint", ["weights", "ledger"])
def test_kill_after_a_validation_resumes_with_its_best_on_dev_choice(tiny_base, tmp_path, checkpoint):  # noqa: F811
    """kill -9 in step 3, after step 2's validation, whose checkpoint (saved before it) the run resumes from: the
    best-on-dev choice did not know step 2's dev score, so the resumed run took step 4's as best (lr 3e-2: the
    uninterrupted run keeps step 2's). validated.json now carries the monitored score, and the resumed run gives
    it to the best-on-dev checkpoint on the checkpoint's (the validated) weights."""
    argv = ["--steps", "8", "--save-every", "2", "--eval-every", "2", "--lr", "3e-2", "--eps", "1e-2",
            "--save-model", "weights", "--checkpoint", checkpoint]
    full, out = tmp_path / "full", tmp_path / "run"
    assert main(_args(tiny_base, full, *argv)) == 0
    proc = _in_subprocess("run_fine_tune_killed_at", 3, _args(tiny_base, out, *argv))
    assert proc.returncode == 137, proc.stderr[-2000:]
    assert main(_args(tiny_base, out, *argv, "--resume")) == 0
    a, b = (json.loads((d / "results.json").read_text()) for d in (full, out))
    assert a["best_step"] == 2 and b["best_step"] == 2 and b["final"] == a["final"]
    assert _validations(out) == _validations(full)
    assert (out / "ledger.jsonl").read_bytes() == (full / "ledger.jsonl").read_bytes()
    from safetensors.torch import load_file

    x, y = (load_file(d / "model" / "model.safetensors") for d in (full, out))
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_resume_with_another_save_every_says_so_in_one_line_not_lightnings_warning(tiny_base, reference, tmp_path,  # noqa: F811
                                                                                   capsys):
    """--save-every is the checkpoints' cadence, not the run: a resume may change it. The checkpoint callback's
    state key names the cadence, so Lightning warned that the run's callback was missing; the run now says what
    changed in one line of its own, and ends with the uninterrupted run's weights."""
    import warnings

    out = tmp_path / "run"
    assert _in_subprocess("run_fine_tune_interrupted_at", 3, _args(tiny_base, out, *COMMON)).returncode == 130
    resumed = [a if a != "2" or COMMON[i - 1] != "--save-every" else "1" for i, a in enumerate(COMMON)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(_args(tiny_base, out, *resumed, "--resume")) == 0
    assert not [w for w in caught if "callbacks used to create the checkpoint" in str(w.message)]
    printed = capsys.readouterr()
    assert "--save-every 1 differs from the run's 2; checkpoints now every 1 steps" in printed.out + printed.err
    x, y = (_trainable(d / "checkpoints" / "last.ckpt") for d in (out, reference))
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_a_plot_whose_write_fails_leaves_the_old_plot_and_is_closed(tmp_path):
    """Every plot goes through l2o.filelock.write_png_atomic: a disk that fills while matplotlib writes the PNG
    leaves the previous plot whole and no temp file, and the figure is closed either way (a long suite that
    plots after every run would otherwise keep every figure it ever made)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from l2o.filelock import write_png_atomic

    target = tmp_path / "loss.png"
    target.write_bytes(b"the previous plot")
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])

    def full_disk(f, **kw):
        f.write(b"\x89PNG half")
        raise OSError(errno.ENOSPC, "No space left on device")

    fig.savefig = full_disk
    with pytest.raises(OSError, match="No space left"):
        write_png_atomic(target, fig)
    assert target.read_bytes() == b"the previous plot" and [p.name for p in tmp_path.iterdir()] == ["loss.png"]
    assert not plt.fignum_exists(fig.number)

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    write_png_atomic(target, fig, dpi=50)
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not plt.fignum_exists(fig.number)
    assert [p.name for p in tmp_path.iterdir()] == ["loss.png"]
