"""bench/artefacts.py: the learned artefacts trained for the evidence panel. The stop rule, resuming, the panel kept
out of meta-training (with meta_train replaced by a scripted stand-in: milliseconds); the real path runs in
tests/test_evidence.py's smoke suite."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import artefacts


def _rows(*metrics):
    return [{"round": i + 1, "metric": m} for i, m in enumerate(metrics)]


@pytest.mark.parametrize("metrics,stop,best", [
    ((0.1,), False, 1),                 # one round: nothing to compare yet
    ((0.1, 0.2, 0.3), False, 3),        # improving: go on
    ((0.1, 0.3, 0.3005), True, 3),      # within the tolerance: stop, the best round is still the highest
    ((0.1, 0.3, 0.2), True, 2),         # worse: stop, use the round before
    ((0.3, 0.3), True, 1),              # a tie: stop, the first of equals
    ((0.1, 0.2, 0.3, 0.4), True, 4),    # --max-rounds 4
])
def test_stop_rule(metrics, stop, best):
    got_stop, got_best = artefacts.decide(_rows(*metrics), 1e-3, 4)
    assert got_stop is stop and got_best["round"] == best
    assert artefacts.decide([], 1e-3, 4) == (False, None)


def _panel(out, scanned=("a_task", "b_task", "c_task", "d_task", "p_task", "q_task"), tasks=("p_task", "q_task")):
    path = out / "learnability" / "panel.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"tasks": list(tasks), "scanned": list(scanned), "settings": {"max_length": 64}}))


@pytest.fixture
def scripted(monkeypatch):
    """meta_train.cli.main replaced: each call writes the results.json of a run whose held-out gain is the next of
    `gains` (per kind), and is recorded with its argv."""
    import meta_train.cli

    calls, gains = [], {"zo-finetuner": [], "bilevel-zofo": []}

    def fake(argv):
        kind, out = argv[argv.index("--method") + 1], argv[argv.index("--out") + 1]
        calls.append(argv)
        from pathlib import Path

        steps, g = int(argv[argv.index("--max_steps") + 1]), gains[kind].pop(0)
        res = ({"steps": steps, "meta_validation": {"improvement": g}} if kind == "zo-finetuner" else
               {"training": {"steps": steps}, "heldout": {"x": {"meta_adapted": 0.5, "base_adapted": 0.5,  # flat
                                                                "meta_adapted_loss": 0.7 - g,
                                                                "base_adapted_loss": 0.7}}})
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "results.json").write_text(json.dumps(res))
        made = Path(out) / artefacts.ARTEFACT_DIR[kind]  # the artefact: a card, and weights the records do not keep
        made.mkdir(exist_ok=True)
        (made / "README.md").write_text(f"card of {kind} at {steps} steps")
        (made / "model.safetensors").write_text(f"weights of {kind} at {steps} steps, gain {g}")
        (Path(out) / "checkpoints").mkdir(exist_ok=True)
        (Path(out) / "checkpoints" / "last.ckpt").write_text("ckpt")
        return 0

    monkeypatch.setattr(meta_train.cli, "main", fake)
    return calls, gains


def test_rounds_stop_when_they_no_longer_help_and_a_rerun_skips_finished_rounds(tmp_path, scripted):
    calls, gains = scripted
    _panel(tmp_path)
    argv = ["--out", str(tmp_path), "--base", "tiny", "--meta-steps", "3", "--max-rounds", "5"]
    gains.update({"zo-finetuner": [0.01, 0.02], "bilevel-zofo": [0.0, 0.05]})
    assert artefacts.main(argv + ["--max-rounds", "2"]) == 0  # both still improving at the cap
    assert len(calls) == 4
    gains.update({"zo-finetuner": [0.015], "bilevel-zofo": [0.1, 0.1]})
    best = artefacts.run(artefacts.parse_args(argv))  # rounds 1-2 recorded: not rerun
    assert len(calls) == 4 + 1 + 2 and not any(gains.values())
    pol, init = (artefacts.rounds(tmp_path, k) for k in artefacts.KINDS)
    assert [(r["round"], r["meta_steps"], r["improved"]) for r in pol] == [(1, 3, True), (2, 6, True), (3, 9, False)]
    assert [r["improved"] for r in init] == [True, True, True, False]
    assert best["zo-finetuner"]["round"] == 2 and best["bilevel-zofo"]["round"] == 3
    folder = tmp_path / "artefacts" / "zo-finetuner"
    assert artefacts.best(tmp_path, "zo-finetuner") == str(folder / "round-2" / "policy")
    # each round continues the previous one: the policy from its folder; the bilevel run from its checkpoint
    third = calls[4]
    assert third[third.index("--model.init_policy") + 1].endswith("zo-finetuner/round-2/policy")
    last = calls[-1]
    assert "--resume" in last and last[last.index("--max_steps") + 1] == "12"  # round 4 of 3 steps
    assert artefacts.run(artefacts.parse_args(argv)) == best and len(calls) == 7  # stopped: nothing reruns
    # recorded rounds keep their artefacts but not the checkpoints no round needs: every policy round's, and every
    # Bilevel round's but the last (a later round, under a larger --max-rounds, resumes from it)
    ckpts = {k: sorted(p.parent.parent.name for p in (tmp_path / "artefacts" / k).glob("round-*/checkpoints/last.ckpt"))
             for k in artefacts.KINDS}
    assert ckpts == {"zo-finetuner": [], "bilevel-zofo": ["round-4"]}
    assert all((folder / f"round-{r}" / "results.json").exists() for r in (1, 2, 3))


def test_a_round_counts_the_cpu_its_killed_attempt_spent(tmp_path, scripted):
    """A round killed at a session's end (its meter file says what it had spent, bench.resume) is charged that too
    when the rerun finishes it; once recorded, the meter file goes."""
    from bench.resume import METER_FILE

    calls, gains = scripted
    _panel(tmp_path)
    killed = tmp_path / "artefacts" / "zo-finetuner" / "round-1"
    killed.mkdir(parents=True)
    (killed / METER_FILE).write_text("5000.0\n")
    gains.update({"zo-finetuner": [0.01], "bilevel-zofo": [0.01]})
    artefacts.main(["--out", str(tmp_path), "--base", "tiny", "--meta-steps", "3", "--max-rounds", "1"])
    pol, init = (artefacts.rounds(tmp_path, k) for k in artefacts.KINDS)
    assert 5000 <= pol[0]["cpu_s"] < 5060 and init[0]["cpu_s"] < 60
    assert not (killed / METER_FILE).exists()


def test_the_panel_never_enters_meta_training_or_meta_validation(tmp_path, scripted):
    calls, gains = scripted
    _panel(tmp_path)
    gains.update({"zo-finetuner": [0.1], "bilevel-zofo": [0.1]})
    assert artefacts.main(["--out", str(tmp_path), "--base", "tiny", "--max-rounds", "1"]) == 0
    assert len(calls) == 2
    for argv in calls:
        named = set(argv[argv.index("--tasks") + 1:argv.index("--max_steps")])
        assert named == {"a_task", "b_task", "c_task", "d_task", "--holdout"}
        assert argv[argv.index("--holdout") + 1:argv.index("--holdout") + 3] == ["a_task", "b_task"]
        assert not {"p_task", "q_task"} & set(argv)


@pytest.mark.parametrize("scanned,tasks,message", [(None, (), "no panel yet"),
                                                   (("p_task", "q_task"), ("p_task",), "needs at least 2 tasks")])
def test_no_family_is_refused_in_one_line(tmp_path, capsys, scanned, tasks, message):
    if scanned:
        _panel(tmp_path, scanned, tasks)
    assert artefacts.main(["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.startswith("bench.artefacts: error:") and len(err.splitlines()) == 1


@pytest.mark.parametrize("before,steps", [(0, 100), (0, 7), (100, 12), (6, 4), (12, 2)])
def test_a_round_checkpoints_at_its_last_step(before, steps):
    """A bilevel round resumes from the previous round's last checkpoint, which must be at its last step."""
    d = artefacts.save_every(before, steps)
    assert steps % d == 0 and before % d == 0 and d <= max(1, steps // 4)


def test_meta_steps_per_kind(tmp_path, scripted):
    """--meta-steps N sets every kind's round; kind=N sets one (the other keeps its default), a Bilevel-ZOFO
    round by default many more steps than the policy's (its step is a first-order PEFT step, ~10x cheaper)."""
    calls, gains = scripted
    _panel(tmp_path)
    assert artefacts.steps_per_kind("7") == {"zo-finetuner": 7, "bilevel-zofo": 7}
    default = artefacts.steps_per_kind(artefacts.DEFAULT_STEPS)
    assert default["bilevel-zofo"] >= 5 * default["zo-finetuner"]
    assert artefacts.steps_per_kind("bilevel-zofo=9") == {**default, "bilevel-zofo": 9}
    with pytest.raises(SystemExit):
        artefacts.parse_args(["--meta-steps", "policy=3"])
    gains.update({"zo-finetuner": [0.1], "bilevel-zofo": [0.1]})
    assert artefacts.main(["--out", str(tmp_path), "--base", "tiny", "--max-rounds", "1",
                           "--meta-steps", "zo-finetuner=5,bilevel-zofo=30"]) == 0
    steps = {a[a.index("--method") + 1]: a[a.index("--max_steps") + 1] for a in calls}
    assert steps == {"zo-finetuner": "5", "bilevel-zofo": "30"}


def test_bilevel_gain_is_on_held_out_loss_and_old_results_are_refused():
    """Accuracy on 100 held-out examples did not move in 5 adaptation steps from either start (0.57 / 0.49 both):
    the gain is the eval-loss difference, and a results.json without losses is refused, not read as 0."""
    res = {"heldout": {"a": {"meta_adapted": 0.57, "base_adapted": 0.57, "meta_adapted_loss": 0.60,
                             "base_adapted_loss": 0.64},
                       "b": {"meta_adapted": 0.49, "base_adapted": 0.49, "meta_adapted_loss": 0.71,
                             "base_adapted_loss": 0.70}}}
    assert artefacts.held_out_metric("bilevel-zofo", res) == pytest.approx((0.04 - 0.01) / 2)
    for v in res["heldout"].values():
        del v["meta_adapted_loss"], v["base_adapted_loss"]
    with pytest.raises(artefacts.ArtefactsError, match="no held-out eval losses"):
        artefacts.held_out_metric("bilevel-zofo", res)


def test_docs_show_artefacts_under_the_out_folder_as_given(tmp_path, monkeypatch):
    """A round records its artefact's absolute path (/work/wt/lead/exp/... on the machine that ran it); the doc shows
    it under --out as the user gave it, also through a symlink, and leaves zoo ids and other folders alone."""
    real = tmp_path / "real"
    (real / "artefacts" / "zo-finetuner" / "round-3" / "policy").mkdir(parents=True)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "evidence").symlink_to(real)
    monkeypatch.chdir(tmp_path)
    recorded = str(real / "artefacts" / "zo-finetuner" / "round-3" / "policy")
    assert artefacts.shown(recorded, "runs/evidence") == "runs/evidence/artefacts/zo-finetuner/round-3/policy"
    assert artefacts.shown("smollm2-135m/meta-init@1", "runs/evidence") == "smollm2-135m/meta-init@1"
    assert artefacts.shown(str(tmp_path / "elsewhere"), "runs/evidence") == str(tmp_path / "elsewhere")


def test_the_doc_names_the_zoo_entry_that_ships_a_rounds_weights_and_only_that_one(tmp_path):
    """The suite's round-3 policy ships as smollm2-135m/zo-finetuner-panel@1; section 8 says so, from the weights'
    sha256, not from a name: round 1 (other weights) ships as nothing, and neither does round 3 with one byte changed,
    or a meta-initialisation folder whose weights are not kept."""
    from types import SimpleNamespace

    from bench.evidence_doc import artefacts_section

    records = Path(__file__).resolve().parents[1] / "docs" / "data" / "evidence"
    rounds = records / "artefacts" / "zo-finetuner"
    assert artefacts.shipped_as(rounds / "round-3" / "policy") == ["smollm2-135m/zo-finetuner-panel@1"]
    assert artefacts.shipped_as(rounds / "round-1" / "policy") == []
    assert artefacts.shipped_as(records / "artefacts" / "bilevel-zofo" / "round-1" / "meta-init") == []
    changed = tmp_path / "policy"
    changed.mkdir()
    data = bytearray((rounds / "round-3" / "policy" / "model.safetensors").read_bytes())
    data[-1] ^= 1
    (changed / "model.safetensors").write_bytes(bytes(data))
    assert artefacts.shipped_as(changed) == []
    args = SimpleNamespace(meta_steps={"zo-finetuner": 40, "bilevel-zofo": 400}, max_rounds=3)
    section = "\n".join(artefacts_section(records, args))
    shipped = section.count("It ships in the built-in zoo as `smollm2-135m/zo-finetuner-panel@1`")
    assert shipped == 1 and "Used: round 3 (" in section


def test_best_finds_a_round_recorded_by_a_process_in_another_folder(tmp_path, monkeypatch):
    """The suite records "runs/evidence/artefacts/..." relative to its own working folder; `--status` or a report run
    elsewhere, with --out naming the same folder another way, must still find the meta-initialisation (it said
    "gone" and that the metainit phase cannot start)."""
    out = tmp_path / "suite"
    (out / "artefacts" / "bilevel-zofo" / "round-1" / "meta-init").mkdir(parents=True)
    row = {"round": 1, "meta_steps": 400, "metric": 0.01, "cpu_s": 9.0, "improved": True,
           "artefact": "runs/evidence/artefacts/bilevel-zofo/round-1/meta-init"}
    (out / "artefacts" / "bilevel-zofo" / "rounds.jsonl").write_text(json.dumps(row) + "\n")
    monkeypatch.chdir(tmp_path)
    found = artefacts.best(out, "bilevel-zofo")
    assert found == str(out / "artefacts" / "bilevel-zofo" / "round-1" / "meta-init") and Path(found).is_dir()
    assert artefacts.best(Path("suite"), "bilevel-zofo") == "suite/artefacts/bilevel-zofo/round-1/meta-init"


def test_after_a_wipe_the_best_bilevel_round_is_meta_trained_again_and_checked_against_its_record(tmp_path, scripted,
                                                                                                  capsys):
    """The records keep a meta-initialisation's card, not its weights. The next artefacts run meta-trains rounds
    1..best again from their records' meta-steps (seeded: the same gain), checks each gain against its record, records
    the CPU in rebuilds.jsonl, and leaves the weights where the metainit phase reads them. A rebuilt round whose gain
    differs is refused: the runs made from the recorded artefact stand on that one."""
    from bench.records import suite_records

    calls, gains = scripted
    _panel(tmp_path)
    argv = ["--out", str(tmp_path), "--base", "tiny", "--meta-steps", "3", "--max-rounds", "5", "--kinds",
            "bilevel-zofo"]
    gains["bilevel-zofo"] = [0.01, 0.05, 0.05]  # round 3 no better: stop, round 2 best
    assert artefacts.main(argv) == 0 and len(calls) == 3
    folder = tmp_path / "artefacts" / "bilevel-zofo"
    weights = folder / "round-2" / "meta-init" / "model.safetensors"
    made = weights.read_text()
    for f in folder.rglob("*"):  # the wipe: what bench.snapshot keeps comes back (records and cards), nothing else
        if f.is_file() and f.name not in ("rounds.jsonl", "README.md"):
            f.unlink()
    gains["bilevel-zofo"] = [0.01, 0.05]
    assert artefacts.main(argv) == 0
    again = calls[3:]
    assert len(again) == 2 and [a[a.index("--max_steps") + 1] for a in again] == ["3", "6"]
    assert "--resume" in again[1]  # round 2 continues round 1's checkpoint, as when it was first made
    assert weights.read_text() == made and not (folder / "round-3" / "meta-init" / "model.safetensors").exists()
    rebuilt = artefacts.read_records(folder / "rebuilds.jsonl")
    assert [r["round"] for r in rebuilt] == [1, 2] and folder / "rebuilds.jsonl" in suite_records(tmp_path)
    assert "rebuilt: held-out gain +0.0500 as recorded" in capsys.readouterr().out
    assert artefacts.main(argv) == 0 and len(calls) == 5  # the weights are back: nothing to do
    weights.unlink()
    gains["bilevel-zofo"] = [0.01, 0.07]  # other code: round 2 comes out another artefact
    assert artefacts.main(argv) == 2
    err = capsys.readouterr().err
    assert "bilevel-zofo round 2 meta-trained again gives held-out gain 0.07, its record 0.05" in err
