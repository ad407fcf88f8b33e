"""The evidence suite's records kept beside its doc (bench/snapshot.py): a wiped --out gets them back, records only
ever grow, a torn line is never kept, and a base's weights are not. The whole suite's round trip (a wiped --out
rewrites the same doc and reruns nothing) is in tests/test_evidence.py."""

from __future__ import annotations

import json

import pytest

from bench import snapshot
from l2o.errors import UserError


def _write(path, text: str | bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)


def _lines(*recs) -> str:
    return "".join(json.dumps(r) + "\n" for r in recs)


def test_a_wiped_out_gets_back_every_kept_file_and_nothing_else(tmp_path):
    out, kept, fresh = tmp_path / "out", tmp_path / "docs" / "data" / "evidence", tmp_path / "fresh"
    _write(out / "prefix" / "runs.jsonl", _lines({"a": 1}, {"a": 2}))
    _write(out / "prefix" / "mezo-s0" / "history.json", "[]")
    _write(out / "prefix" / "mezo-s0" / "ledger.jsonl", _lines({"seed": 1}))  # a run's own ledger: not kept
    _write(out / "prefix" / "mezo-s0" / "checkpoints" / "last.ckpt", b"\0" * 100)
    _write(out / "learnability" / "panel.json", "{}")
    _write(out / "learnability" / "table.md", "| task |")  # the scan's report: rewriting it needs the tasks' data
    _write(out / "learnability" / "s1-a-prefix-lr0.01" / "loss.png", b"png")  # a run's plot: not kept
    _write(out / "artefacts" / "zo-finetuner" / "rounds.jsonl", _lines({"round": 1}))
    _write(out / "artefacts" / "zo-finetuner" / "round-1" / "policy" / "model.safetensors", b"\1" * 1000)
    _write(out / "artefacts" / "bilevel-zofo" / "round-1" / "meta-init" / "model.safetensors",
           b"\2" * (snapshot.MAX_BYTES + 1))  # a base's weights: not kept
    assert snapshot.save(out, kept) == 6
    assert [str(p) for p in snapshot.kept(kept)] == [
        "artefacts/zo-finetuner/round-1/policy/model.safetensors", "artefacts/zo-finetuner/rounds.jsonl",
        "learnability/panel.json", "learnability/table.md", "prefix/mezo-s0/history.json", "prefix/runs.jsonl"]
    assert snapshot.save(out, kept) == 0  # nothing new
    assert snapshot.restore(kept, fresh) == 6
    for rel in snapshot.kept(kept):
        assert (fresh / rel).read_bytes() == (out / rel).read_bytes()


def test_records_only_grow_and_a_torn_line_is_not_kept(tmp_path):
    out, kept = tmp_path / "out", tmp_path / "kept"
    runs = out / "prefix" / "runs.jsonl"
    _write(runs, _lines({"a": 1}) + '{"a": 2')  # an append in progress
    snapshot.save(out, kept)
    assert (kept / "prefix" / "runs.jsonl").read_text() == _lines({"a": 1})
    _write(runs, _lines({"a": 1}, {"a": 2}))
    assert snapshot.save(out, kept) == 1 and (kept / "prefix" / "runs.jsonl").read_text() == _lines({"a": 1}, {"a": 2})
    # an --out behind the kept records (an old runs/ beside a newer clone, a wrong --out) saves nothing: its panel
    # or forward time would overwrite the kept runs' own; restoring brings it up to them
    _write(runs, _lines({"a": 1}))
    _write(out / "learnability" / "panel.json", "{}")
    with pytest.raises(UserError, match="is behind the kept records"):
        snapshot.save(out, kept)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="is behind the kept records"):
        snapshot.save(tmp_path / "empty", kept)
    assert not (kept / "learnability").exists() and (kept / "prefix" / "runs.jsonl").read_text() == _lines(
        {"a": 1}, {"a": 2})
    assert snapshot.restore(kept, out) == 1 and runs.read_text() == _lines({"a": 1}, {"a": 2})
    assert snapshot.save(out, kept) == 1  # now level with them: its panel is saved


def test_records_of_other_runs_are_refused_in_one_line(tmp_path):
    out, kept = tmp_path / "out", tmp_path / "kept"
    _write(kept / "prefix" / "runs.jsonl", _lines({"a": 1}))
    _write(out / "prefix" / "runs.jsonl", _lines({"b": 1}, {"b": 2}))
    with pytest.raises(UserError, match=r"hold different runs .*another --out or --docs") as err:
        snapshot.save(out, kept)
    assert "\n" not in str(err.value)
    assert (kept / "prefix" / "runs.jsonl").read_text() == _lines({"a": 1})  # left as it was


def test_the_command_saves_now_and_says_what_is_wrong_in_one_line(tmp_path, capsys):
    out, docs = tmp_path / "out", tmp_path / "docs"
    _write(out / "prefix" / "runs.jsonl", _lines({"a": 1}))
    assert snapshot.main(["--out", str(out), "--docs", str(docs)]) == 0
    assert (docs / "data" / "evidence" / "prefix" / "runs.jsonl").read_text() == _lines({"a": 1})
    assert "1 file(s) saved" in capsys.readouterr().out
    _write(out / "prefix" / "runs.jsonl", _lines({"b": 1}))  # other runs than the kept ones
    assert snapshot.main(["--out", str(out), "--docs", str(docs)]) == 2
    assert snapshot.main(["--out", str(tmp_path / "nowhere"), "--docs", str(docs)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(e.startswith("bench.snapshot: error: ") for e in err), err
    assert "hold different runs" in err[0] and "no suite folder" in err[1]
