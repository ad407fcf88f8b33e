"""What both apps' Lightning runs share (fine_tune and meta_train import it; it imports no app).

- `folder`: `RunFolder`, one run per `--out` (a lock naming the holder) and clean-up after a failure.
- `interrupt`: Ctrl-C finishes the step, saves `last.ckpt` and stops; `finish_fit` runs `Trainer.fit`.
- `progress`: quiet libraries, and progress lines where no progress bar shows.

Each module imports Lightning itself, only when a run needs it.
"""
