"""The centre of each method's lr grid, and its eps, per PEFT mode: the one table bench/harness.py,
bench/compare_optimizers.py, bench/learnability.py and bench/evidence.py read.

A ZO method's centre is MeZO's lr in that mode (`MEZO_LR`, MeZO's settings scaled to the harness's base,
SmolLM2-135M) times the method's ratio to MeZO (`RATIO`, from its paper's or official code's settings beside
MeZO's, or, where those do not pin it, from the expected update: the lr at which the method's expected step
equals MeZO's). A grid is `--lr-grid` (0.3, 1, 3 by default) times the centre, extended past an edge, so a ratio
only has to land within a grid step of the best lr. First-order methods and Bilevel-ZOFO's first-order lower
level have absolute centres (`ABSOLUTE`).

Measured here for the ratios that follow the gradient's norm (ZO-SGD-Sign, ZO-Adam): ||grad L|| of the trainable
parameters at the start, SmolLM2-135M, batch 16 x 64 tokens, 3 batches each of valid_parentheses,
sports_understanding and tweet_sentiment (one backward each): full 6.6-45 (median 18.5), LoRA 0.36-2.1 (median
0.81), prefix 0.28-2.3 (median 0.88), prompt 0.31-2.8 (median 1.07). MeZO's own prefix runs of the learnability
scan agree: their rms projected gradient (E g^2 = ||grad L||^2) is 0.46-1.45 over 12 runs.
"""

from __future__ import annotations

# MeZO's eps per --peft mode: the harness's default eps for every ZO method in that mode (eps= overrides). MeZO's
# README: prefix 1e-1, LoRA 1e-2, full 1e-3 (the scales of the perturbed parameters differ by mode).
MEZO_EPS = {
    "prefix": 1e-1,
    "prompt": 1e-1,  # soft prompt tokens live at the embeddings' scale, as the prefix's do
    "lora": 1e-2,
    "full": 1e-3,
}

# MeZO's lr per --peft mode at MEZO_EPS.
MEZO_LR = {
    "prefix": 1e-2,  # MeZO's README prefix grid {1e-2, 1e-3} (eps 1e-1), its top: the learnability scan's stage 1
    "prompt": 1e-2,  # MeZO has no prompt mode; ZO-Bench's ZO-SGD prompt grids equal its prefix grids (OPT-13B sweeps)
    "lora": 1e-3,    # MeZO's README LoRA {1e-4, 5e-5} (OPT-13B) x 10, the learnability scan's LoRA stage
    "full": 1e-5,    # MeZO's README full {1e-6, 1e-7} (OPT-13B) x 10, as bench/evidence.py's full phase pins it
}

# a method's centre / MeZO's in the same mode: a number (every mode) or a {mode: ratio}
RATIO = {
    "mezo": 1.0,
    "zo-sgd": 1.0,          # ZO-Bench's ZO-SGD is MeZO's estimator and step
    "mezo-gv": 1.0,         # MeZO-GV Table III: MeZO's and GV's lr grids match in every mode (full, LoRA, prefix)
    "mezo-greedy": 1.0,     # as mezo-gv (the guide's larger effective step is what `match=mezo` tests)
    "bszo": 1.0,            # BSZO App. C: one lr grid per model for BSZO and its baselines (MeZO's decades)
    "bszo-b": 1.0,          # as bszo
    "zo-finetuner": 1.0,    # ZO Fine-tuner's zo_fine_tuner.sh: lr 1e-6, MeZO's full value
    "hizoo": 1.0,           # HiZOO's README (OPT-13B): lr 1e-6 at eps 1e-3, MeZO's full value; P = 1 at the start
    "lozo": 1.0,            # LOZO's large_models README: "1e-6/1e-7" for OPT-13B, MeZO's grid, and its MeZO and
                            # LOZO commands both lr 1e-7 (its RoBERTa commands: MeZO 1e-6, LOZO 1e-7 at rank 4)
    "lozo-m": 1.0,          # LOZO's RoBERTa commands: LOZO-M at LOZO's lr; N is an EMA (1 - beta), LOZO's step
    "sparse-mezo": 3.0,     # equal expected step: 1 / (the perturbed share 0.25) = 4, rounded down to 3; the paper
                            # reports larger usable lrs than MeZO's (a NeurIPS 2025 review's summary; its code and
                            # lr table not read here)
    "zo-sgd-cons": 1.0,     # ZO-Bench's conservative step is MeZO's lr g z when taken (its grids: ZO-SGD's decades)
    "zo-sgd-mmt": 0.1,      # torch SGD momentum (no dampening): steady-state step 1 / (1 - 0.9) = 10 MeZO's at the
                            # default momentum; ZO-Bench's OPT-13B COPA full-FT grid tops at 1e-5 (ZO-SGD's: 1e-4)
    # sign(g) z: expected update lr sqrt(2/pi) grad / ||grad L|| (MeZO's: lr grad), equal at lr sqrt(pi/2) ||grad L||:
    # 1.1 (prefix), 1.3 (prompt), 1.0 (LoRA), 23 (full) with the medians above; ZO-Bench's sign grids cover the
    # same 4-5 decades as its ZO-SGD grids, so they do not pin the ratio
    "zo-sgd-sign": {"prefix": 1.0, "prompt": 1.0, "lora": 1.0, "full": 20.0},
    # Adam's steady state: m ~ mean(g z) = grad, sqrt(v) ~ rms(g z_i) ~ ||grad L||, so the expected update is
    # lr grad / ||grad L||, MeZO's at lr ||grad L||: 0.9, 1.1, 0.8, 18.5; ZO-Bench's Adam grids: its ZO-SGD decades
    "zo-adam": {"prefix": 1.0, "prompt": 1.0, "lora": 1.0, "full": 20.0},
}
RATIO.update({  # each composition with a learned policy at its base method's ratio, as zo-finetuner at MeZO's
    "zo-finetuner+gv": RATIO["mezo-gv"], "zo-finetuner+greedy": RATIO["mezo-greedy"],
    "zo-finetuner+bszo": RATIO["bszo"], "zo-finetuner+zo-sgd-sign": RATIO["zo-sgd-sign"],
    "zo-finetuner+zo-sgd-cons": RATIO["zo-sgd-cons"], "zo-finetuner+zo-sgd-mmt": RATIO["zo-sgd-mmt"],
    "zo-finetuner+hizoo": RATIO["hizoo"], "zo-finetuner+lozo": RATIO["lozo"], "zo-finetuner+lozo-m": RATIO["lozo-m"],
    "zo-finetuner+sparse-mezo": RATIO["sparse-mezo"],
})

# absolute centres (not MeZO-relative): {mode: lr} or one lr for every mode
ABSOLUTE = {
    "bilevel-zofo": {"prefix": 1e-2, "prompt": 1e-2, "lora": 1e-4},  # lower Adam lr: official RTE, SQuAD sweeps
    "fo-sgd": 1e-2,     # the harness's prefix value, every mode (no per-mode anchor here)
    # MeZO's README FT (AdamW) examples: full 1e-5, prefix 1e-2, LoRA 1e-4 (prompt as prefix); it was 1e-3 in every
    # mode, 100x MeZO's full-parameter FT lr
    "fo-adamw": {"prefix": 1e-2, "prompt": 1e-2, "lora": 1e-4, "full": 1e-5},
}


def unrunnable(optimizer: str, peft: str = "prefix", lr_given: bool = False) -> str | None:
    """Why a comparison cannot run `optimizer` (None: it can): a name fine_tune does not know, or no lr centre in
    PEFT mode `peft` and no lr given (bench.harness's --method and bench.compare_optimizers's --optimizers; a
    misspelt name was a KeyError here)."""
    from fine_tune.first_order import FIRST_ORDER
    from l2o import catalog

    known = [*catalog.method_names(), *FIRST_ORDER]
    if optimizer not in known:
        return f"unknown optimizer '{optimizer}' (known: {', '.join(sorted(known))})"
    if not lr_given and not has_centre(optimizer, peft):
        return f"bench/lr_centres.py has no lr centre for {optimizer} in {peft}; give lr=..."
    return None


def has_centre(optimizer: str, peft: str = "prefix") -> bool:
    try:
        centre(optimizer, peft)
    except KeyError:
        return False
    return True


def centre(optimizer: str, peft: str = "prefix") -> float:
    """The centre of `optimizer`'s lr grid in PEFT mode `peft`; KeyError for a method or mode with none."""
    if optimizer in ABSOLUTE:
        value = ABSOLUTE[optimizer]
        return value[peft] if isinstance(value, dict) else value
    ratio = RATIO[optimizer]
    value = MEZO_LR[peft] * (ratio[peft] if isinstance(ratio, dict) else ratio)
    return float(f"{value:.6g}")  # 1e-06, not 1.0000000000000002e-06
