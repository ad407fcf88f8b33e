"""What stops a run from outside, in one sentence: a full or read-only disk, a lost process.

`run_failure(err, trainer)` turns such an exception, raised during `Trainer.fit`, into `RunFailed`
(`l2o.errors`; the CLIs print it and exit 1); anything else stays as it was (a bug keeps its traceback).
`RunFolder` (folder.py) then adds what survives: the checkpoint `--resume` continues from, or that
`--out` is as it was.

A lost process shows up on the others as an error of the collective they were in (gloo: "Connection
closed by peer", nccl: an aborted communicator). With two processes the lost one is the other one; with
more, a survivor cannot tell which from the error alone and says so.
"""

from __future__ import annotations

import errno
import re

from l2o.errors import RunFailed

DISK_ERRNOS = {errno.ENOSPC: "free space", errno.EDQUOT: "free space", errno.EFBIG: "free space",
               errno.EROFS: "", errno.EIO: ""}
_PEER_LOST = re.compile(r"connection (closed|reset) by peer|broken pipe|gloo|nccl|communicator was aborted|"
                        r"socket timeout|timed out", re.IGNORECASE)


class RankLost(RunFailed):
    """A process of a multi-process run ended while the others needed it; `ranks`: the lost ones, if known."""

    def __init__(self, message: str, ranks: tuple[int, ...]):
        super().__init__(message)
        self.ranks = ranks


def lost_peer(err: BaseException, world_size: int) -> bool:
    """`err` is a collective that failed because another process went away."""
    if world_size < 2 or not isinstance(err, RuntimeError):
        return False
    import torch.distributed as dist

    return isinstance(err, getattr(dist, "DistError", ())) or bool(_PEER_LOST.search(str(err)))


def disk_failure(err: BaseException | None) -> RunFailed | None:
    """`err` as the one sentence of a full or failing disk, or None when it is not one."""
    if isinstance(err, OSError) and err.errno in DISK_ERRNOS:
        return RunFailed(f"cannot write {err.filename or 'a file of the run'} ({err.strerror})", DISK_ERRNOS[err.errno])
    return None


def run_failure(err: BaseException, trainer) -> RunFailed | None:
    """`err` as a one-sentence `RunFailed`, or None when it is not a failure from outside the run."""
    failure = disk_failure(err)
    if failure is not None:
        return failure
    if lost_peer(err, trainer.world_size):
        n, me = trainer.world_size, trainer.global_rank
        ranks = (1 - me,) if n == 2 else ()
        who = f"the process of rank {ranks[0]} (of 2)" if ranks else f"one of the other {n - 1} processes"
        return RankLost(f"lost {who} after step {trainer.global_step}", ranks)
    return None
