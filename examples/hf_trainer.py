"""Zeroth-order fine-tuning with Hugging Face `Trainer` (or TRL's `SFTTrainer`): change one class.

    python examples/hf_trainer.py                         # MeZO and the shipped SmolLM2 policy, Trainer
    python examples/hf_trainer.py --trainer sft           # the same through TRL's SFTTrainer
    python examples/hf_trainer.py --optimizers mezo-gv --steps 40 --lr 1e-5
    python examples/hf_trainer.py --offload cpu           # a model larger than the GPU (ZOTrainer(offload="cpu"))
    python examples/hf_trainer.py --resume                # after Ctrl-C or SIGTERM: continue from the saved step

The embedded SmolLM2-135M-Instruct (offline) learns the sentiment word of real tweets (`tweet_sentiment`):
the loss is the cross-entropy of the answer tokens after the prompt. Each optimizer starts from the same
weights, runs `--steps` Trainer steps with full-parameter ZO updates, and is evaluated with
`Trainer.evaluate()` on held-out tweets before and after. TensorBoard logs land in `<out>/<optimizer>/runs`.
It runs on the CPU, unless `--device-map` or `--offload cpu` has GPUs to place the model on (they are the
`device_map=` and `offload=` of `ZOTrainer`; docs/distributed.md).
"""

from __future__ import annotations

import time

import torch


class AnswerDataset(torch.utils.data.Dataset):
    """Prompt + gold answer tokens; the labels mask the prompt (-100), so only the answer is scored."""

    def __init__(self, rendered, tokenizer):
        self.items = []
        for r in rendered:
            prompt = tokenizer(r.prompt, add_special_tokens=False)["input_ids"]
            answer = tokenizer(r.target, add_special_tokens=False)["input_ids"]
            self.items.append({"input_ids": prompt + answer, "labels": [-100] * len(prompt) + answer})

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def collate(pad_id: int):
    """Right-pad input_ids with the pad token and labels with -100."""
    def fn(rows):
        n = max(len(r["input_ids"]) for r in rows)
        ids = torch.tensor([r["input_ids"] + [pad_id] * (n - len(r["input_ids"])) for r in rows])
        labels = torch.tensor([r["labels"] + [-100] * (n - len(r["labels"])) for r in rows])
        mask = torch.tensor([[1] * len(r["input_ids"]) + [0] * (n - len(r["input_ids"])) for r in rows])
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}
    return fn


def data(args, tokenizer):
    from l2o.tasks import get_task, sample_splits

    splits = sample_splits(get_task("tweet_sentiment"), seed=0, num_train=args.num_train, num_dev=0,
                           num_eval=args.num_eval)
    return splits.train, splits.eval    # rendered: prompt, candidates, gold answer


def trainer_for(args, name, model, tokenizer, train, evals):
    """A ZOTrainer (or ZOSFTTrainer): the only lines that differ from a first-order Trainer script."""
    from fine_tune.hf import zoo_policy

    common = dict(output_dir=f"{args.out}/{name.replace(':', '_').replace('/', '_')}", learning_rate=args.lr,
                  max_grad_norm=0.0,            # clipping does not apply to ZO: ZOTrainer refuses the default 1.0
                  per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=16,
                  max_steps=args.steps, logging_steps=max(1, args.steps // 10), save_strategy="no",
                  report_to=["tensorboard"], seed=args.seed, disable_tqdm=True,
                  use_cpu=not ((args.device_map or args.offload) and torch.cuda.is_available()))
    zo = dict(optimizer=name, optimizer_kwargs={"eps": args.eps}, policy_resolver=zoo_policy,
              device_map=args.device_map, offload=args.offload)
    if args.trainer == "sft":
        from trl import SFTConfig

        from l2o.integrations.trl import ZOSFTTrainer

        sft = SFTConfig(**common, bf16=False,      # SFTConfig defaults to bf16 autocast, which ZO refuses
                        completion_only_loss=True, max_length=None)
        from datasets import Dataset

        def rows(rendered):
            return Dataset.from_list([{"prompt": r.prompt, "completion": r.target} for r in rendered])

        return ZOSFTTrainer(model=model, args=sft, train_dataset=rows(train), eval_dataset=rows(evals),
                            processing_class=tokenizer, **zo)
    from transformers import TrainingArguments

    from l2o.integrations.hf import ZOTrainer

    return ZOTrainer(model=model, args=TrainingArguments(**common), train_dataset=AnswerDataset(train, tokenizer),
                     eval_dataset=AnswerDataset(evals, tokenizer), data_collator=collate(tokenizer.pad_token_id),
                     **zo)


def main(argv=None) -> int:
    from l2o.errors import OneLineParser

    ap = OneLineParser(prog="hf_trainer", command="python examples/hf_trainer.py",
                       description=__doc__.splitlines()[0])
    ap.add_argument("--trainer", choices=["hf", "sft"], default="hf")
    ap.add_argument("--optimizers", nargs="+", default=["mezo", "zoo:smollm2-135m/zo-finetuner"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--eps", type=float, default=1e-3)
    ap.add_argument("--num-train", type=int, default=160)
    ap.add_argument("--num-eval", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/hf_trainer")
    ap.add_argument("--base", default="smollm2-135m",
                    help="the model to fine-tune: a base name, a Hugging Face id or a local folder (a zoo: policy "
                         "needs the base it was made for)")
    ap.add_argument("--resume", action="store_true",
                    help="continue each optimizer from the newest checkpoint in its output folder (Ctrl-C or "
                         "SIGTERM saved one); one without a checkpoint starts afresh")
    place = ap.add_mutually_exclusive_group()
    place.add_argument("--device-map", choices=["auto", "balanced", "sequential"], default=None,
                       help="layers across the visible GPUs (ZOTrainer(device_map=...))")
    place.add_argument("--offload", choices=["cpu"], default=None,
                       help="weights in CPU memory, each block streamed to the device (ZOTrainer(offload=...))")
    args = ap.parse_args(argv)
    from l2o.errors import ConfigError

    for name in ("steps", "batch_size", "num_train", "num_eval"):  # 0 ran a step anyway, or failed in Trainer
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")

    from l2o.integrations.hf import checkpoints
    from l2o.models import load_base

    rows = []
    for name in args.optimizers:
        model, tokenizer, _ = load_base(args.base)   # the same starting weights for every optimizer
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        train, evals = data(args, tokenizer)
        trainer = trainer_for(args, name, model, tokenizer, train, evals)
        before = trainer.evaluate()["eval_loss"]
        t0 = time.perf_counter()
        trainer.train(resume_from_checkpoint=True if args.resume and checkpoints(trainer.args.output_dir) else None)
        seconds = time.perf_counter() - t0
        after = trainer.evaluate()["eval_loss"]
        trainer.save_model()
        opt = trainer.zo_optimizer
        rows.append((name, opt.step_count, opt.forward_passes, before, after, seconds))
        print(f"{name}: eval loss {before:.4f} -> {after:.4f} after {opt.step_count} steps, "
              f"{opt.forward_passes} forward passes, {seconds:.0f} s; model in {trainer.args.output_dir}", flush=True)
    print(f"\n| optimizer ({args.trainer}) | steps | forwards | eval loss before | eval loss after | train s |")
    print("|---|---|---|---|---|---|")
    for name, steps, fwd, before, after, seconds in rows:
        print(f"| {name} | {steps} | {fwd} | {before:.4f} | {after:.4f} | {seconds:.0f} |")
    return 0


if __name__ == "__main__":
    import sys

    from l2o.errors import UserError
    from l2o.stop import exit_code

    try:
        raise SystemExit(main())
    except UserError as err:  # a bad option, base, optimizer or zoo id: one line (was a traceback), exit 2
        print(f"hf_trainer: error: {err}", file=sys.stderr)
        raise SystemExit(err.exit_code) from None
    except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM: ZOTrainer saved the step and said where
        print("hf_trainer: stopped; rerun with --resume to continue from the saved step", file=sys.stderr)
        raise SystemExit(exit_code(stop)) from None
