"""A benchmark's fine-tune run that survives its benchmark being killed.

The benchmarks (the learnability scan, the harness) record a run only once it has finished. A run cut short
by a kill or a session's end leaves its folder with ``checkpoints/last.ckpt``; the next invocation continues
it from there (``fine_tune --resume`` gives the weights of an uninterrupted run) instead of from step 0, and
starts it again only when it cannot resume (other flags, a damaged checkpoint)."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path


def run_to_end(cfg, say=print) -> dict:
    """fine_tune's result of `cfg`, continuing an unfinished run in `cfg.out`. `say`: one line when it resumes
    (the CPU time the caller measures is then this part's only) or cannot."""
    from fine_tune.run import run
    from l2o.errors import UserError

    if (Path(cfg.out) / "checkpoints" / "last.ckpt").exists():
        try:
            res = run(replace(cfg, resume=True), log=lambda m: None)
            say(f"         resumed {cfg.out} from its last checkpoint (CPU time below: the resumed part only)")
            return res
        except UserError as err:
            say(f"         cannot resume {cfg.out} ({err}); running it again")
    shutil.rmtree(cfg.out, ignore_errors=True)  # what an unresumable interrupted run left
    return run(cfg, log=lambda m: None)
