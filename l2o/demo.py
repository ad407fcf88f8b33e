"""Interim main job: a real MeZO fine-tuning of a tiny OPT built from a config, printing its loss falling.

    python -m l2o.demo [--steps 300] [--optimizer mezo]

The model is random-initialised (no download); the task is next-token prediction on a fixed batch of
patterned sequences, so the loss it prints can only fall if the forward-only optimizer works.
"""

from __future__ import annotations

import argparse
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m l2o.demo", description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--optimizer", default="mezo")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--eps", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import torch
    from transformers import OPTConfig, OPTForCausalLM

    from l2o.optim import build_optimizer

    torch.manual_seed(args.seed)
    cfg = OPTConfig(vocab_size=64, hidden_size=64, num_hidden_layers=2, ffn_dim=256, num_attention_heads=4,
                    max_position_embeddings=64, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                    word_embed_proj_dim=64, pad_token_id=1, bos_token_id=2, eos_token_id=2)
    model = OPTForCausalLM(cfg).eval()  # dropout off during ZO forwards
    g = torch.Generator().manual_seed(args.seed)
    starts = torch.randint(3, 60, (8, 1), generator=g)
    ids = (starts + torch.arange(24) * 3) % 61 + 3  # arithmetic sequences: learnable structure

    def closure():
        return model(input_ids=ids, labels=ids).loss

    opt = build_optimizer(args.optimizer, model, lr=args.lr, eps=args.eps, seed=args.seed)
    print(f"MeZO-family demo: {args.optimizer} on a tiny OPT ({sum(p.numel() for p in model.parameters()):,} "
          f"params), {args.steps} steps, lr {args.lr}, eps {args.eps}")
    t0 = time.perf_counter()
    with torch.no_grad():
        start = float(closure())
        print(f"step {0:5d}  loss {start:.4f}")
        window = []
        for step in range(1, args.steps + 1):
            opt.step(closure)
            window.append(opt.last.loss)
            if step % max(1, args.steps // 10) == 0:
                print(f"step {step:5d}  loss {sum(window) / len(window):.4f}  (mean of the last {len(window)} "
                      f"train losses; forward passes so far {opt.forward_passes})")
                window = []
        end = float(closure())
    print(f"loss {start:.4f} -> {end:.4f} in {time.perf_counter() - t0:.1f} s "
          f"({opt.forward_passes} forward passes, no backward pass)")
    return 0 if end < start else 1


if __name__ == "__main__":
    raise SystemExit(main())
