"""Losses and evaluation over rendered examples (MeZO's `large_models` conventions).

- `CandidateCE` ("ce"): per candidate the MEAN log-prob of its tokens given the prompt; softmax
  cross-entropy over the candidates against the gold index (MeZO's --train_as_classification).
  Default for cls and mch tasks, except those whose `Task.train_objective` says otherwise.
- `AnswerLM` ("lm"): token cross-entropy on the gold continuation only (for gen: " <answer>\\n"), the
  prompt masked (MeZO's --only_train_option). Default for gen tasks and for COPA and ReCoRD, which
  MeZO trains with --train_as_classification False.
- `NonDiffF1` ("nondiff-f1"): minus the mean token F1 of greedy generations (stop at "\\n"); not
  differentiable, meant for zeroth-order optimisation (MeZO's --non_diff).

All sequences of a batch (prompt + each candidate) are encoded into one right-padded batch with an
attention mask; prompts are truncated from the left to `max_length` (keeping BOS) so the candidate
stays intact. Only the logits at candidate positions are computed (`_logits_at`: `logits_to_keep` where the
model supports it, counted from the end of the sequence, which also makes the code indifferent to the virtual
tokens PEFT prompt tuning prepends; then the output head sees those positions only).

`evaluate` returns {"accuracy"} for examples with candidates (a prediction counts when it is any index in
`Rendered.correct`: ReCoRD accepts every gold answer, as MeZO) and {"f1"} for generation examples.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from l2o.wrappers import unwrap_peft
from l2o.placement import input_device
from l2o.tasks.base import Rendered, Task, TaskError
from l2o.tasks.metrics import max_f1

DEFAULT_MAX_LENGTH = 2048  # MeZO's --max_length; pass a smaller one (e.g. 256) to cut long prompts on CPU
OBJECTIVE_KINDS = ("ce", "lm", "nondiff-f1")
_ALIASES = {"classification": "ce", "cls": "ce", "candidate-ce": "ce", "ce": "ce", "lm": "lm",
            "teacher-forcing": "lm", "nondiff-f1": "nondiff-f1", "non-diff": "nondiff-f1", "f1": "nondiff-f1"}


# -------------------------------------------------------------------------------------- encoding
def _device(model) -> torch.device:
    """Where the inputs go (an offloaded model's parameters sit on the meta device between forwards)."""
    return input_device(model)


def _pad_id(tokenizer) -> int:
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if tid is not None:
            return int(tid)
    return 0


def encode_pairs(tokenizer, prompts: list[str], continuations: list[str], max_length: int = DEFAULT_MAX_LENGTH):
    """Token ids of prompt + continuation for each pair, and where the continuation starts.

    The continuation tokens are those the joint encoding adds after the prompt's encoding (as MeZO
    does); where a tokenizer merges across the boundary, the continuation is encoded on its own.
    Prompts are cut from the left (BOS kept) so that the whole sequence fits in `max_length`.
    Returns (list of id lists, list of continuation start indices).
    """
    uniq = list(dict.fromkeys(prompts))
    enc_p = dict(zip(uniq, tokenizer(uniq, add_special_tokens=True)["input_ids"]))
    full = tokenizer([p + c for p, c in zip(prompts, continuations)], add_special_tokens=True)["input_ids"]
    bos = tokenizer.bos_token_id
    seqs, starts = [], []
    for p, c, f in zip(prompts, continuations, full):
        p_ids = list(enc_p[p])
        f = list(f)
        if len(f) > len(p_ids) and f[:len(p_ids)] == p_ids:
            c_ids = f[len(p_ids):]
        else:
            c_ids = list(tokenizer(c, add_special_tokens=False)["input_ids"])
        if not c_ids:
            raise TaskError(f"the continuation {c!r} encodes to no tokens")
        c_ids = c_ids[: max(1, max_length - 1)]
        room = max_length - len(c_ids)
        if len(p_ids) > room:
            keep_bos = bos is not None and p_ids and p_ids[0] == bos and room >= 2
            p_ids = ([bos] + p_ids[len(p_ids) - (room - 1):]) if keep_bos else p_ids[len(p_ids) - room:]
        if not p_ids:  # a prompt must leave at least one token to predict the first candidate token from
            p_ids = [bos if bos is not None else _pad_id(tokenizer)]
        seqs.append(p_ids + c_ids)
        starts.append(len(p_ids))
    return seqs, starts


_KEEP_CACHE: dict[type, bool] = {}


def _supports_logits_to_keep(model) -> bool:
    base = unwrap_peft(model)
    t = type(base)
    if t not in _KEEP_CACHE:
        try:
            _KEEP_CACHE[t] = "logits_to_keep" in inspect.signature(base.forward).parameters
        except (TypeError, ValueError):
            _KEEP_CACHE[t] = False
    return _KEEP_CACHE[t]


def continuation_logprobs(model, tokenizer, prompts: list[str], continuations: list[str],
                          max_length: int = DEFAULT_MAX_LENGTH) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of continuation-token log-probs and continuation lengths, one entry per pair (one forward)."""
    if not prompts:
        raise TaskError("the batch is empty: there is nothing to score")
    seqs, starts = encode_pairs(tokenizer, prompts, continuations, max_length)
    return _score_encoded(model, tokenizer, seqs, starts)


def _padded(tokenizer, seqs: list[list[int]]):
    """Right-padded ids and attention mask."""
    n, t = len(seqs), max(len(s) for s in seqs)
    ids = torch.full((n, t), _pad_id(tokenizer), dtype=torch.long)
    mask = torch.zeros((n, t), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


_HEAD_GATHER: dict[type, bool] = {}  # False: the model reshapes its logits, so the head sees all kept positions


def _logits_at(model, ids: torch.Tensor, mask: torch.Tensor, rows: list[int], cols: list[int]) -> torch.Tensor:
    """Logits [M, V] at the positions (rows[i], cols[i]) of the right-padded batch `ids`, from one forward.

    Only these positions go through the output head: `logits_to_keep` cuts the positions before the earliest one,
    and a pre-hook on the head gathers the M wanted ones of the rest into one contiguous [M, d] matrix. The head
    (d x vocab, the largest matmul of a small model) then costs M rows instead of batch x kept positions, and never
    reads a strided slice, which PyTorch's bf16 linear ran ~20x slower with a frozen head (docs/benchmarks.md).
    A model whose logits do not come back as [M, V] (one that reshapes them) is noted and gets the plain slice from
    then on."""
    device = _device(model)
    n, t = ids.shape
    kwargs = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
    keep = t - min(cols)  # positions min(cols) .. t - 1
    if _supports_logits_to_keep(model):
        kwargs["logits_to_keep"] = keep
    else:
        keep = t
    base = unwrap_peft(model)
    head, kind = base.get_output_embeddings(), type(base)
    if head is not None and _HEAD_GATHER.get(kind, True):
        rows_t, cols_t = torch.tensor(rows), torch.tensor(cols)

        def gather(module, args):  # [n, P, d] -> [M, d]; the P positions the head gets are the sequence's last
            if not args or args[0].dim() != 3:
                return None
            h = args[0]
            p = h.shape[1]
            return (h.reshape(-1, h.shape[-1])[(rows_t * p + cols_t - (t - p)).to(h.device)], *args[1:])

        handle = head.register_forward_pre_hook(gather)
        try:
            logits = model(**kwargs).logits
        finally:
            handle.remove()
        if logits.dim() == 2 and logits.shape[0] == len(rows):
            return logits
        _HEAD_GATHER[kind] = False
    logits = model(**kwargs).logits[:, -keep:, :]
    return logits[torch.tensor(rows, device=logits.device), torch.tensor(cols, device=logits.device) - (t - keep)]


def _next_token_logprobs(model, tokenizer, prompts: list[list[int]]) -> torch.Tensor:
    """log p(. | prompt) after each (right-padded) prompt: [n, vocab], from one forward."""
    ids, mask = _padded(tokenizer, prompts)
    last = [len(p) - 1 for p in prompts]
    return _logits_at(model, ids, mask, list(range(len(prompts))), last).float().log_softmax(-1)


def _score_encoded(model, tokenizer, seqs: list[list[int]], starts: list[int]):
    """Sum of log-probs of seqs[i][starts[i]:] given seqs[i][:starts[i]], and those lengths (one forward)."""
    ids, mask = _padded(tokenizer, seqs)
    n = ids.shape[0]
    # the logits at position q - 1 predict the token at q
    rows, cols, targets = [], [], []
    for i, (s, st) in enumerate(zip(seqs, starts)):
        for q in range(st, len(s)):
            rows.append(i)
            cols.append(q - 1)
            targets.append(s[q])
    picked = _logits_at(model, ids, mask, rows, cols).float()  # [M, V]
    tgt_t = torch.tensor(targets, device=picked.device)
    token_lp = picked.log_softmax(-1).gather(1, tgt_t[:, None]).squeeze(1)
    sums = torch.zeros(n, dtype=token_lp.dtype, device=token_lp.device).index_add(
        0, torch.tensor(rows, device=token_lp.device), token_lp)
    lens = torch.tensor([len(s) - st for s, st in zip(seqs, starts)], dtype=token_lp.dtype, device=token_lp.device)
    return sums, lens


def candidate_scores(model, tokenizer, batch: list[Rendered],
                     max_length: int = DEFAULT_MAX_LENGTH) -> list[torch.Tensor]:
    """Per example, the mean token log-prob of each candidate (a 1-D tensor per example)."""
    prompts, conts, sizes = [], [], []
    for ex in batch:
        if not ex.candidates:
            raise TaskError("candidate scoring needs examples with candidates (this one is a generation example)")
        prompts += [ex.prompt] * len(ex.candidates)
        conts += list(ex.candidates)
        sizes.append(len(ex.candidates))
    if not prompts:
        raise TaskError("the batch is empty: there is nothing to score")
    seqs, starts = encode_pairs(tokenizer, prompts, conts, max_length)
    # Fast path: when every candidate adds exactly one token to the same prompt tokens, all candidates of
    # an example are scored from ONE forward of its prompt (the same log-probs at 1/C of the compute).
    firsts = [sum(sizes[:e]) for e in range(len(sizes))]
    single = all(len(seqs[j]) - starts[j] == 1 and seqs[j][:starts[j]] == seqs[f][:starts[f]]
                 for f, size in zip(firsts, sizes) for j in range(f, f + size))
    if single:
        lp = _next_token_logprobs(model, tokenizer, [seqs[f][:starts[f]] for f in firsts])
        return [lp[e, [seqs[j][-1] for j in range(f, f + size)]] for e, (f, size) in enumerate(zip(firsts, sizes))]
    sums, lens = _score_encoded(model, tokenizer, seqs, starts)
    return list(torch.split(sums / lens, sizes))


# ------------------------------------------------------------------------------------ generation
def greedy_generate(model, tokenizer, prompts: list[str], max_new_tokens: int = 50,
                    max_length: int = DEFAULT_MAX_LENGTH) -> list[str]:
    """Greedy continuations, cut at the first newline (MeZO's stop criterion)."""
    if not prompts:
        raise TaskError("the batch is empty: there is nothing to generate from")
    from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

    peft_cfg = getattr(model, "active_peft_config", None)
    if len(prompts) > 1 and getattr(peft_cfg, "is_prompt_learning", False):
        # peft drops position_ids for prefix/prompt tuning, so left-padded batches would shift positions:
        # generate one prompt at a time instead (no padding)
        return [greedy_generate(model, tokenizer, [p], max_new_tokens, max_length)[0] for p in prompts]
    room = max(1, max_length - max_new_tokens)
    bos = tokenizer.bos_token_id
    encoded = []
    for ids in tokenizer(prompts, add_special_tokens=True)["input_ids"]:
        ids = list(ids)
        if len(ids) > room:
            ids = (([bos] + ids[len(ids) - room + 1:]) if bos is not None and ids[0] == bos and room >= 2
                   else ids[-room:])
        encoded.append(ids)
    pad = _pad_id(tokenizer)
    n, t = len(encoded), max(len(e) for e in encoded)
    ids = torch.full((n, t), pad, dtype=torch.long)
    mask = torch.zeros((n, t), dtype=torch.long)
    for i, e in enumerate(encoded):  # left padding for batched generation
        ids[i, t - len(e):] = torch.tensor(e, dtype=torch.long)
        mask[i, t - len(e):] = 1

    class _StopAtNewline(StoppingCriteria):
        def __call__(self, input_ids, scores, **kw):
            texts = tokenizer.batch_decode(input_ids[:, t:], skip_special_tokens=True)
            return torch.tensor(["\n" in x for x in texts], dtype=torch.bool, device=input_ids.device)

    eos = tokenizer.eos_token_id
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                           pad_token_id=pad, eos_token_id=eos, bos_token_id=bos)
    device = _device(model)
    out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=cfg,
                         stopping_criteria=StoppingCriteriaList([_StopAtNewline()]))
    texts = tokenizer.batch_decode(out[:, t:], skip_special_tokens=True)
    return [x.split("\n")[0].strip() for x in texts]


@contextlib.contextmanager
def _evaluating(model, examples: list[Rendered]):
    """Eval mode and no grad over a non-empty `examples` (refused in one line otherwise); the model's training mode
    comes back afterwards: what `example_scores` and `mean_loss` share."""
    if not examples:
        raise TaskError("nothing to evaluate: the example list is empty")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


# ------------------------------------------------------------------------------------ objectives
@dataclass
class Objective:
    """Base class: `loss(model, tokenizer, batch)` and `evaluate(model, tokenizer, examples)`."""

    max_length: int = DEFAULT_MAX_LENGTH
    max_new_tokens: int = 50
    name: str = "objective"
    differentiable: bool = True

    def loss(self, model, tokenizer, batch: list[Rendered]) -> torch.Tensor:
        raise NotImplementedError

    def weighted_loss(self, model, tokenizer, batch: list[Rendered]) -> tuple[torch.Tensor, float]:
        """(total, weight) with total / weight = loss: what a data-parallel shard contributes to its
        global batch's loss (weight = examples; answer tokens for the token-averaged "lm" loss)."""
        return self.loss(model, tokenizer, batch) * len(batch), float(len(batch))

    def evaluate(self, model, tokenizer, examples: list[Rendered], batch_size: int = 16) -> dict:
        """Accuracy (argmax of mean candidate log-prob) for cls/mch examples, token F1 for gen ones."""
        scores = self.example_scores(model, tokenizer, examples, batch_size)
        return {"accuracy" if examples[0].candidates else "f1": sum(scores) / len(scores)}

    def mean_loss(self, model, tokenizer, examples: list[Rendered], batch_size: int = 16) -> float:
        """This objective's loss over all of `examples` (eval mode, no grad; weighted as `weighted_loss`): a
        held-out signal that moves where a few steps flip no example's argmax, so accuracy cannot see them."""
        total = weight = 0.0
        with _evaluating(model, examples):
            for i in range(0, len(examples), batch_size):
                t, w = self.weighted_loss(model, tokenizer, examples[i:i + batch_size])
                total, weight = total + float(t), weight + w
        return total / weight

    def scores_and_mean_loss(self, model, tokenizer, examples: list[Rendered], batch_size: int = 16
                             ) -> tuple[list[float], float]:
        """`example_scores` and `mean_loss` of the same examples (an objective that can reads both off one pass)."""
        return (self.example_scores(model, tokenizer, examples, batch_size),
                self.mean_loss(model, tokenizer, examples, batch_size))

    def example_scores(self, model, tokenizer, examples: list[Rendered], batch_size: int = 16) -> list[float]:
        """Per example, 1.0 if the argmax candidate is correct else 0.0 (cls/mch), or the token F1 of the greedy
        generation (gen): what `evaluate` averages, kept per example for paired comparisons."""
        out: list[float] = []
        with _evaluating(model, examples):
            for i in range(0, len(examples), batch_size):
                chunk = examples[i:i + batch_size]
                if examples[0].candidates:
                    scores = candidate_scores(model, tokenizer, chunk, self.max_length)
                    out += [float(int(sc.argmax()) in ex.correct) for ex, sc in zip(chunk, scores)]
                else:
                    preds = greedy_generate(model, tokenizer, [e.prompt for e in chunk], self.max_new_tokens,
                                            self.max_length)
                    out += [max_f1(p, e.answers) for p, e in zip(preds, chunk)]
        return out


@dataclass
class CandidateCE(Objective):
    name: str = "ce"

    def loss(self, model, tokenizer, batch: list[Rendered]) -> torch.Tensor:
        return self._losses(batch, candidate_scores(model, tokenizer, batch, self.max_length)).mean()

    @staticmethod
    def _losses(batch: list[Rendered], scores: list[torch.Tensor]) -> torch.Tensor:
        """-log softmax(candidate scores)[gold], per example."""
        losses = []
        for ex, sc in zip(batch, scores):
            if ex.gold is None:
                raise TaskError("candidate cross-entropy needs a gold candidate")
            losses.append(-F.log_softmax(sc, dim=0)[ex.gold])
        return torch.stack(losses)

    def scores_and_mean_loss(self, model, tokenizer, examples: list[Rendered], batch_size: int = 16
                             ) -> tuple[list[float], float]:
        """Accuracy per example and the mean candidate CE from one scoring pass (two passes give the same)."""
        out, total = [], 0.0
        with _evaluating(model, examples):
            for i in range(0, len(examples), batch_size):
                chunk = examples[i:i + batch_size]
                scores = candidate_scores(model, tokenizer, chunk, self.max_length)
                out += [float(int(sc.argmax()) in ex.correct) for ex, sc in zip(chunk, scores)]
                total += float(self._losses(chunk, scores).sum())
        return out, total / len(examples)


@dataclass
class AnswerLM(Objective):
    name: str = "lm"

    def loss(self, model, tokenizer, batch: list[Rendered]) -> torch.Tensor:
        total, weight = self.weighted_loss(model, tokenizer, batch)
        return total / weight

    def weighted_loss(self, model, tokenizer, batch: list[Rendered]) -> tuple[torch.Tensor, float]:
        sums, lens = continuation_logprobs(model, tokenizer, [e.prompt for e in batch],
                                           [e.target for e in batch], self.max_length)
        return -sums.sum(), float(lens.sum())


@dataclass
class NonDiffF1(Objective):
    name: str = "nondiff-f1"
    differentiable: bool = False

    def loss(self, model, tokenizer, batch: list[Rendered]) -> torch.Tensor:
        with torch.no_grad():
            preds = greedy_generate(model, tokenizer, [e.prompt for e in batch], self.max_new_tokens, self.max_length)
        answers = [e.answers if e.answers else [e.target] for e in batch]
        f1 = sum(max_f1(p, a) for p, a in zip(preds, answers)) / len(batch)
        return torch.tensor(0.0 - f1, dtype=torch.float32)


def objective_for(task: Task | str | None = None, kind: str | None = None, **kw) -> Objective:
    """The task's default objective (its `train_objective`, else ce for cls/mch and lm for gen) or `kind`."""
    if isinstance(task, str):
        from l2o.tasks import get_task

        task = get_task(task)
    if kind is None and task is not None and task.train_objective:
        kind = task.train_objective
    if kind is None:
        kind = "lm" if task is not None and task.kind == "gen" else "ce"
    key = _ALIASES.get(str(kind).lower())
    if key is None:
        raise TaskError(f"unknown objective {kind!r}; choose one of {', '.join(OBJECTIVE_KINDS)}")
    if key == "ce" and task is not None and task.kind == "gen":
        raise TaskError(f"task {task.name!r} is a generation task: use objective 'lm' or 'nondiff-f1', not 'ce'")
    cls = {"ce": CandidateCE, "lm": AnswerLM, "nondiff-f1": NonDiffF1}[key]
    return cls(**kw)
