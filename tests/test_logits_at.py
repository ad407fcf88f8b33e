"""The output head sees only the positions a loss reads (l2o.tasks.objectives._logits_at): the same logits as the
full forward's at those positions, for each architecture and PEFT mode, from a contiguous [M, d] input to the head
(a strided slice of the hidden states ran this CPU's bf16 matmul ~20x slower)."""

from __future__ import annotations

import pytest
import torch

from l2o.peft_modes import apply_peft
from l2o.tasks import objectives
from l2o.wrappers import unwrap_peft
from tests.helpers import tiny_model, tiny_tokenizer


@pytest.mark.parametrize("arch,peft", [("llama", "full"), ("opt", "full"), ("gpt2", "full"), ("llama", "prefix"),
                                       ("llama", "prompt"), ("opt", "lora")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_head_gets_only_the_wanted_positions_and_gives_the_full_forwards_logits(arch, peft, dtype):
    tok = tiny_tokenizer()
    model = apply_peft(tiny_model(arch).to(dtype), peft, seed=0).eval()
    seqs = [tok("a short one")["input_ids"], tok("a much longer sequence of several words here")["input_ids"],
            tok("mid length text")["input_ids"]]
    ids, mask = objectives._padded(tok, seqs)
    rows, cols = [0, 0, 1, 2, 2], [len(seqs[0]) - 2, len(seqs[0]) - 1, 3, 1, len(seqs[2]) - 1]
    seen = []
    head = unwrap_peft(model).get_output_embeddings()
    hook = head.register_forward_hook(lambda m, a, out: seen.append((tuple(a[0].shape), a[0].is_contiguous())))
    with torch.no_grad():
        got = objectives._logits_at(model, ids, mask, rows, cols)
        hook.remove()
        full = model(input_ids=ids, attention_mask=mask).logits  # every position (prompt tuning's virtual ones first)
    want = full[:, -ids.shape[1]:][torch.tensor(rows), torch.tensor(cols)]
    assert seen == [((len(rows), head.in_features), True)]  # the gathered rows only, contiguous
    assert objectives._HEAD_GATHER.get(type(unwrap_peft(model)), True)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert got.shape == want.shape and torch.allclose(got.float(), want.float(), atol=tol, rtol=tol)


def test_a_model_that_reshapes_its_logits_gets_the_plain_slice():
    """A head whose output the model does not return as [M, V] is noticed once; the logits are still right."""
    tok = tiny_tokenizer()
    model = tiny_model("llama").eval()

    class Reshaping(torch.nn.Module):  # returns [n, P, V] logits whatever the head computed
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def get_output_embeddings(self):
            return self.inner.get_output_embeddings()

        def forward(self, **kw):
            out = self.inner(**kw)
            if out.logits.dim() == 2:
                out.logits = torch.zeros(kw["input_ids"].shape[0], 1, out.logits.shape[-1])
            return out

    wrapped = Reshaping(model)
    seqs = [tok("one two three")["input_ids"], tok("four five")["input_ids"]]
    ids, mask = objectives._padded(tok, seqs)
    rows, cols = [0, 1], [len(seqs[0]) - 1, len(seqs[1]) - 1]
    with torch.no_grad():
        got = objectives._logits_at(wrapped, ids, mask, rows, cols)
        want = model(input_ids=ids, attention_mask=mask).logits[torch.tensor(rows), torch.tensor(cols)]
    assert objectives._HEAD_GATHER.pop(Reshaping) is False
    assert torch.allclose(got, want, atol=1e-5)
