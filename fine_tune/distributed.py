"""Multi-process fine-tuning on Lightning's DDP: `fine_tune --devices N [--num-nodes M] --parallel ...`.

Launching is Lightning's: `--devices N` on one machine starts N - 1 more processes (its subprocess
launcher); under torchrun or SLURM (`srun`) Lightning reads the ranks from the environment. What we
change is only what DDP would add: `ZODDPStrategy` keeps Lightning's launchers, cluster environments,
process group and checkpoint/logging rank-zero rules, but does not wrap the module in
`DistributedDataParallel` (whose gradient buckets are another model-sized buffer and whose reducer
has nothing to do in a forward-only step). Ranks exchange the step's losses through
`l2o.distributed.TorchCollective`; rank 0 writes every output.

    data-parallel       each rank evaluates its shard rows[rank::N] of the step's global batch
    direction-parallel  each rank evaluates its share of the step's independent directions on the
                        whole batch (bit-identical to one process)
    auto                direction when the method's evaluation batches fill every rank, else data
                        (`l2o.distributed.auto_parallel`)
"""

from __future__ import annotations

from lightning.pytorch.strategies import DDPStrategy

from l2o.distributed import auto_parallel


class ZODDPStrategy(DDPStrategy):
    """Lightning's DDP without the DistributedDataParallel wrapper: only scalars cross the wire."""

    def configure_ddp(self) -> None:
        """Keep the LightningModule as it is: no gradient buckets, no weight broadcast, no hooks. The
        ranks start from the same base and seeds, and the optimizers' guard compares their weights."""


def strategy_for(cfg):
    """The Trainer's strategy: ZODDPStrategy for more than one process, else Lightning's default."""
    if cfg.world_size() == 1:
        return "auto"
    return ZODDPStrategy(process_group_backend="nccl" if cfg.accelerator_name() == "gpu" else "gloo")


def launch_rank(trainer) -> int:
    """This process's global rank, known before `fit` launches the other processes (Lightning's own
    environment detection: its launcher's LOCAL_RANK/NODE_RANK, torchrun's RANK, SLURM_PROCID)."""
    strategy = trainer.strategy
    if isinstance(strategy, DDPStrategy):
        strategy.set_world_ranks()
    return trainer.global_rank


def parallel_mode(cfg) -> str:
    """--parallel, with "auto" resolved from the method's evaluation batches (built on a 1-weight model)."""
    if cfg.world_size() == 1:
        return "direction"  # one process: nothing to split
    if cfg.parallel != "auto":
        return cfg.parallel
    from l2o.optim import probe

    batches = probe(cfg.optimizer, **cfg.optimizer_kwargs()).evaluation_batches()
    return auto_parallel(batches, cfg.world_size(), cfg.batch_size)
