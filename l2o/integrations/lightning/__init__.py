"""What both apps' Lightning runs share (fine_tune and meta_train import it; it imports no app).

- `folder`: `RunFolder`, one run per `--out` (a lock naming the holder), clean-up after a failure (also
  by a survivor of a lost rank 0), and the resume checks.
- `checkpoints`: `AtomicCheckpointIO` (a full disk leaves the previous checkpoint whole), `LastCheckpoint`
  (one `last.ckpt`), and a damaged checkpoint refused in one line.
- `interrupt`: Ctrl-C finishes the step, saves `last.ckpt` and stops; `finish_fit` runs `Trainer.fit`.
- `validation`: `owed_validation`, a resumed run does the validation its checkpoint preceded (once).
- `failures`: a full disk or a lost process as one sentence (`l2o.errors.RunFailed`, exit 1).
- `progress`: quiet libraries, and progress lines where no progress bar shows.
- `placed`: a module whose model l2o.placement placed keeps its devices (`KeepsPlacement`).

Each module imports Lightning itself, only when a run needs it.
"""
