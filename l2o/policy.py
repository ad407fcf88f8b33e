"""ZO Fine-tuner's learned policy (arXiv 2510.00419): one tiny MLP per parameter block -> sigma_b.

    sigma_b = | W2_b tanh(W1_b x_b + b1_b) + b2_b |      W1_b: 64x5, W2_b: 1x64  (449 floats per block)
    x_b     = [mean(theta_b), var(theta_b), L+_{t-1}, L-_{t-1}, sigma_{b,t-1}]  (no gradient; 0, 0, 1 at t = 0)
    nf      = sqrt(sum_b n_b) / sqrt(sum_b n_b sigma_b^2)   (normalisation, on by default)
    d_b     = nf * sigma_b * z_b                             (i.e. Direction.block_scales = nf * sigma)
    L+-_{t-1} = L(theta +- eps d) of the previous step along one of its directions (`StepResult.pair`; a
              one-sided method mirrors L- = 2 f0 - L+), so the features mean the same under every method

n_b is the block's numel (size rule "numel", the default), so E||d||^2 / D = sum n_b (nf sigma_b)^2 / sum n_b
= 1 exactly: the policy allocates a step of MeZO's size across blocks and never changes its size. The
authors' code (size rule "authors") counts an embedding matrix (found by module type, `nn.Embedding`) as
hidden x 15 x batch_size entries, the rows it guesses a batch touches; for a tied embedding/lm_head every row
moves the loss, and that rule makes E||d||^2 / D = 2.3-3.8 for the shipped SmolLM2 policy, i.e. a bigger step
than MeZO's at the same lr (the embedding block alone gets ~13x MeZO's per-coordinate step).

A policy records the size rule it was meta-trained under (`size_rule`, `arch.size_rule` in its artefact's
config; "numel" for a new policy): its sigma is only meaningful with that nf, so deployment uses it unless
told otherwise. Artefacts made before the rule was recorded load with none; deploying one needs the rule named
(`policy_size_rule`), as a wrong guess changes the step (the shipped SmolLM2 policy: 3.5x MeZO's under one
rule, 1x under the other).

All blocks' MLPs are stored stacked (`w1` [B,64,5], `b1` [B,64], `w2` [B,1,64], `b2` [B,1]; the zoo's
`zo-finetuner-policy` layout) and evaluated with one batched einsum. `PolicyScales` turns a policy into
the `block_scales` callable every ZO optimizer accepts, so MeZO, MeZO-GV/Greedy and BSZO all run with it.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from l2o.blocks import named_blocks

KIND = "zo-finetuner-policy"
POLICY_TENSORS = ("w1", "b1", "w2", "b2")  # stacked per-block MLP weights, as stored
IN_FEATURES = 5
HIDDEN = 64
EMBEDDING_TOKENS_PER_EXAMPLE = 15  # the authors' estimate of rows touched per example
SIZE_RULES = ("numel", "authors")  # n_b of the normaliser: true sizes, or the authors' embedding estimate


class ZOPolicy(nn.Module):
    """B independent MLPs Linear(5->64) -> Tanh -> Linear(64->1) -> |.|, stacked for one batched matmul.

    `block_names`: ordered names of the parameter blocks the policy is for (as `l2o.blocks.named_blocks`).
    Initialisation: nn.Linear's default (uniform +-1/sqrt(fan_in)) for the weights and b1, and b2 = 1, so
    an untrained policy outputs sigma_b close to 1 (MeZO) for every block.
    """

    def __init__(self, block_names: Sequence[str], in_features: int = IN_FEATURES, hidden: int = HIDDEN,
                 normalize: bool = True, base_model: str | None = None, base_fingerprint: str | None = None,
                 seed: int = 0, size_rule: str | None = "numel"):
        super().__init__()
        if size_rule is not None and size_rule not in SIZE_RULES:
            raise ValueError(f"policy size rule must be one of {', '.join(SIZE_RULES)}, got {size_rule!r}")
        self.size_rule = size_rule  # the normaliser's n_b it was meta-trained under; None: not recorded
        names = [str(n) for n in block_names]
        if not names:
            raise ValueError("a policy needs at least one block name")
        if len(set(names)) != len(names):
            raise ValueError("policy block names must be unique")
        self.block_names = names
        self.in_features, self.hidden, self.normalize = int(in_features), int(hidden), bool(normalize)
        self.base_model, self.base_fingerprint = base_model, base_fingerprint
        b, f, h = len(names), self.in_features, self.hidden
        g = torch.Generator().manual_seed(int(seed))

        def uniform(shape, fan_in):
            bound = 1.0 / math.sqrt(fan_in)
            return (torch.rand(shape, generator=g) * 2 - 1) * bound

        self.w1 = nn.Parameter(uniform((b, h, f), f))
        self.b1 = nn.Parameter(uniform((b, h), f))
        self.w2 = nn.Parameter(uniform((b, 1, h), h))
        self.b2 = nn.Parameter(torch.ones(b, 1))

    @property
    def num_blocks(self) -> int:
        return len(self.block_names)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features [B, 5] -> sigma [B] (non-negative)."""
        x = features.to(self.w1.dtype)
        hid = torch.tanh(torch.einsum("bhf,bf->bh", self.w1, x) + self.b1)
        return (torch.einsum("boh,bh->bo", self.w2, hid) + self.b2).abs().squeeze(-1)

    # ------------------------------------------------------------------ artefacts
    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k).detach().to(torch.float32).cpu().contiguous() for k in POLICY_TENSORS}

    def config(self, training: dict | None = None) -> dict:
        return {"kind": KIND, "base_model": self.base_model or "unknown", "base_fingerprint": self.base_fingerprint,
                "arch": {"in_features": self.in_features, "hidden": self.hidden, "block_names": list(self.block_names),
                         "normalize": self.normalize, **({"size_rule": self.size_rule} if self.size_rule else {})},
                "training": dict(training or {})}

    @classmethod
    def from_tensors(cls, tensors: dict, config: dict) -> "ZOPolicy":
        arch = config["arch"]
        pol = cls(arch["block_names"], arch["in_features"], arch["hidden"], arch.get("normalize", True),
                  config.get("base_model"), config.get("base_fingerprint"), size_rule=arch.get("size_rule"))
        with torch.no_grad():
            for k in POLICY_TENSORS:
                getattr(pol, k).copy_(tensors[k].to(torch.float32))
        return pol

    @classmethod
    def for_model(cls, model: nn.Module, base_model: str | None = None, seed: int = 0,
                  normalize: bool = True, size_rule: str = "numel") -> "ZOPolicy":
        """A fresh policy for the trainable blocks of `model` (fingerprint recorded)."""
        from l2o.models import fingerprint

        names = [n for n, _ in named_blocks(model)]
        return cls(names, normalize=normalize, base_model=base_model, base_fingerprint=fingerprint(model), seed=seed,
                   size_rule=size_rule)


# ---------------------------------------------------------------------- features, sizes, normalisation
def embedding_block_ids(model: nn.Module, params: Sequence[torch.Tensor]) -> set[int]:
    """Indices (into `params`) of tensors owned by an `nn.Embedding` (by module type, not by name)."""
    emb = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    return {i for i, p in enumerate(params) if id(p) in emb}


def effective_sizes(model: nn.Module, params: Sequence[torch.Tensor], batch_size: int,
                    tokens_per_example: int = EMBEDDING_TOKENS_PER_EXAMPLE, rule: str = "numel") -> torch.Tensor:
    """n_b per block (float64): numel ("numel"), or with "authors" hidden x 15 x batch_size for embeddings."""
    if rule not in SIZE_RULES:
        raise ValueError(f"size rule must be one of {', '.join(SIZE_RULES)}, got {rule!r}")
    emb = embedding_block_ids(model, params) if rule == "authors" else set()
    sizes = []
    for i, p in enumerate(params):
        if i in emb and p.ndim == 2:
            sizes.append(min(p.numel(), p.shape[1] * tokens_per_example * int(batch_size)))
        else:
            sizes.append(p.numel())
    return torch.tensor(sizes, dtype=torch.float64)


def normalization_factor(sigma: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """nf = sqrt(sum n_b) / sqrt(sum n_b sigma_b^2) (differentiable in sigma; float32 result)."""
    s = sizes.to(sigma.device)
    num = s.sum().sqrt()
    den = (s * sigma.to(torch.float64) ** 2).sum().clamp_min(1e-300).sqrt()
    return (num / den).to(sigma.dtype)


@torch.no_grad()
def weight_stats(params: Sequence[torch.Tensor]) -> torch.Tensor:
    """[B, 2] float32: mean and (unbiased; 0 for one element) variance of each block's weights."""
    out = torch.empty(len(params), 2, dtype=torch.float32)
    for i, p in enumerate(params):
        x = p.detach().float()
        out[i, 0] = x.mean()
        out[i, 1] = x.var() if x.numel() > 1 else 0.0
    return out


def features(stats: torch.Tensor, prev_plus: float, prev_minus: float, prev_sigma: torch.Tensor) -> torch.Tensor:
    """[B, 5] inputs: mean, var, L+_{t-1}, L-_{t-1}, sigma_{b,t-1} (all detached)."""
    b = stats.shape[0]
    losses = torch.tensor([prev_plus, prev_minus], dtype=torch.float32).expand(b, 2)
    return torch.cat([stats.float(), losses, prev_sigma.detach().float().reshape(b, 1)], dim=1)


# ---------------------------------------------------------------------- the optimizer-side adapter
class PolicyScales:
    """The `block_scales` callable that plugs a policy into any ZO optimizer (`(optimizer) -> scales`).

    At the start of each step it computes sigma from the features (no gradient) and returns nf * sigma
    (or sigma when the policy does not normalise). `size_rule` None: the policy's own (refused when the
    policy records none: its sigma was learned under one nf or the other, and a guess changes the step).
    `observe(step_result)` records the step's L+ and L- (`StepResult.pair`, the same meaning for every
    method) as the next step's features.
    `state_dict()` / `load_state_dict()` hold the previous losses and sigma, so a resumed run is
    bit-identical. The optimizer's block names are matched to the policy's by name.
    """

    def __init__(self, policy: ZOPolicy, batch_size: int = 16,
                 tokens_per_example: int = EMBEDDING_TOKENS_PER_EXAMPLE, size_rule: str | None = None):
        size_rule = size_rule or policy.size_rule
        if size_rule is None:
            raise ValueError("this policy does not record the size rule it was meta-trained under (an artefact "
                             "made before the rule was recorded); name it: policy_size_rule 'numel' or 'authors' "
                             "(fine_tune --policy-size-rule)")
        if size_rule not in SIZE_RULES:
            raise ValueError(f"policy size rule must be one of {', '.join(SIZE_RULES)}, got {size_rule!r}")
        self.size_rule = size_rule
        self.policy = policy.eval()
        for p in self.policy.parameters():
            p.requires_grad_(False)
        self.batch_size, self.tokens_per_example = int(batch_size), int(tokens_per_example)
        self.prev_plus, self.prev_minus = 0.0, 0.0
        self.prev_sigma: torch.Tensor | None = None
        self.last_sigma: torch.Tensor | None = None
        self.last_nf: float = 1.0
        self._index: torch.Tensor | None = None
        self._sizes: torch.Tensor | None = None
        self._names: list[str] | None = None

    def bind(self, model: nn.Module, blocks) -> None:
        """Match the optimizer's blocks (objects with .name/.param) to the policy's blocks by name."""
        names = [b.name for b in blocks]
        pos = {n: i for i, n in enumerate(self.policy.block_names)}
        missing = [n for n in names if n not in pos]
        if missing:
            raise ValueError(
                f"the policy has no network for {len(missing)} of the model's {len(names)} parameter blocks "
                f"(e.g. {missing[0]!r}); it was made for another model or another set of trainable parameters")
        self._names = names
        self._index = torch.tensor([pos[n] for n in names], dtype=torch.long)
        self._sizes = effective_sizes(model, [b.param for b in blocks], self.batch_size, self.tokens_per_example,
                                      self.size_rule)
        if self.prev_sigma is None:
            self.prev_sigma = torch.ones(len(names), dtype=torch.float32)

    @torch.no_grad()
    def sigma(self, params: Sequence[torch.Tensor]) -> torch.Tensor:
        x = features(weight_stats(params), self.prev_plus, self.prev_minus, self.prev_sigma)
        full = torch.zeros(self.policy.num_blocks, IN_FEATURES, dtype=torch.float32)
        full[self._index] = x
        return self.policy(full)[self._index].float()

    def __call__(self, optimizer) -> list[float]:
        if self._index is None:
            self.bind(optimizer.engine.model, optimizer.blocks)
        sigma = self.sigma([b.param for b in optimizer.blocks])
        nf = float(normalization_factor(sigma, self._sizes)) if self.policy.normalize else 1.0
        self.last_sigma, self.last_nf = sigma, nf
        return (sigma * nf).tolist()

    def observe(self, result) -> None:
        """Record a finished step (a StepResult); skipped steps leave the features unchanged. The features are
        the step's `pair`, L(theta +- eps d) along one of its directions, whatever the method (MeZO's two-point
        pair, GV's along v, one-sided MeZO's and BSZO's L+ with L- mirrored as 2 f0 - L+): the meaning the
        policy was meta-trained on. (The last two losses a step evaluated were that only for MeZO and GV.)"""
        if result is None or result.skipped or self.last_sigma is None:
            return
        if result.pair is None:
            raise ValueError("this optimizer's steps give the policy no L+/L- pair (StepResult.pair), so its "
                             "features would mean something else than they did in meta-training")
        self.prev_plus, self.prev_minus = (float(x) for x in result.pair)
        self.prev_sigma = self.last_sigma.clone()

    def state_dict(self) -> dict:
        return {"prev_plus": self.prev_plus, "prev_minus": self.prev_minus,
                "prev_sigma": None if self.prev_sigma is None else self.prev_sigma.clone(),
                "block_names": list(self.policy.block_names), "batch_size": self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        if list(state.get("block_names", self.policy.block_names)) != list(self.policy.block_names):
            raise ValueError("this policy state was saved for a policy with different parameter blocks")
        self.prev_plus, self.prev_minus = float(state["prev_plus"]), float(state["prev_minus"])
        ps = state.get("prev_sigma")
        self.prev_sigma = None if ps is None else torch.as_tensor(ps, dtype=torch.float32).clone()
