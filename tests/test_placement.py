"""Models placed by accelerate (offloaded to CPU memory or disk, or spread over devices) train exactly as
the same model held normally: the engine perturbs each block after the placement hook has put it in place
and writes updates where the weights live. Execution device: the CPU (no GPU here)."""

import functools

import pytest
import torch

from l2o.blocks import named_blocks
from l2o.engine import Direction, Engine, OffloadedBackward
from l2o.models import fingerprint
from l2o.optim import build_optimizer
from l2o.placement import PlacementError, homes, input_device, place
from tests.helpers import tiny_model, tiny_tokenizer


def _batch():
    tok = tiny_tokenizer()
    return tok(["The movie was great and the acting was", "Paris is the capital and largest city of"],
               return_tensors="pt", padding=True)


def _closure(model, batch):
    def closure():
        ids = {k: v.to(input_device(model)) for k, v in batch.items()}
        return model(**ids, labels=ids["input_ids"].masked_fill(ids["attention_mask"] == 0, -100)).loss
    return closure


def _accelerate_cpu(model, tmp_path):
    from accelerate import cpu_offload

    cpu_offload(model, execution_device="cpu")


def _accelerate_disk(model, tmp_path):
    from accelerate import disk_offload

    disk_offload(model, str(tmp_path / "offload"), execution_device="cpu")


def _accelerate_mixed(model, tmp_path):
    """Layer 0 resident, layer 1 and the final norm on disk, the rest resident: hooks on every module."""
    from accelerate import dispatch_model

    dmap = {"model.decoder.embed_tokens": "cpu", "model.decoder.embed_positions": "cpu",
            "model.decoder.final_layer_norm": "disk", "model.decoder.layers.0": "cpu",
            "model.decoder.layers.1": "disk", "lm_head": "cpu"}
    dispatch_model(model, dmap, main_device="cpu", offload_dir=str(tmp_path / "offload"), force_hooks=True)


PLACEMENTS = {
    "accelerate-cpu-offload": _accelerate_cpu,
    "accelerate-disk-offload": _accelerate_disk,
    "accelerate-dispatch-mixed": _accelerate_mixed,
    "place-offload-cpu": lambda m, tmp: place(m, offload="cpu"),
    "place-offload-disk": lambda m, tmp: place(m, offload="disk", folder=tmp / "offload"),
    "place-device-map-auto": lambda m, tmp: place(m, device_map="auto"),
}


@functools.lru_cache(maxsize=None)
def _reference(optimizer="mezo", dtype=torch.float32, steps=3):
    """The same training on the model held normally (computed once per setting)."""
    return _train(None, None, optimizer, dtype, steps)[1]


def _train(placement, tmp_path, optimizer="mezo", dtype=torch.float32, steps=3):
    model = tiny_model("opt").to(dtype)
    if placement is not None:
        PLACEMENTS[placement](model, tmp_path)
    batch = _batch()
    opt = build_optimizer(optimizer, model, lr=1e-2, eps=1e-3, seed=11)
    losses, grads = [], []
    for _ in range(steps):
        opt.step(_closure(model, batch))
        losses.append(opt.last.loss)
        grads.append(list(opt.last.projected_grads))
    weights = {n: p.detach().clone() for n, p in named_blocks(model)}
    return model, {"losses": losses, "grads": grads, "weights": weights, "ledger": opt.ledger.text()}


@pytest.mark.parametrize("placement", sorted(PLACEMENTS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_placed_training_is_bit_identical_to_the_model_held_normally(placement, dtype, tmp_path):
    ref = _reference(dtype=dtype)
    model, got = _train(placement, tmp_path, dtype=dtype)
    assert any(p.device.type == "meta" for p in model.parameters()) or placement == "place-device-map-auto"
    assert got["losses"] == ref["losses"]
    assert got["grads"] == ref["grads"] and all(g != 0.0 for row in got["grads"] for g in row)
    assert list(got["weights"]) == list(ref["weights"])  # same blocks, same order, the tie counted once
    for name, w in ref["weights"].items():
        assert torch.equal(got["weights"][name], w), name
    assert got["ledger"] == ref["ledger"]
    assert fingerprint(model) == fingerprint(tiny_model("opt"))


def test_a_many_direction_method_is_bit_identical_offloaded(tmp_path):
    ref = _reference("mezo-gv", steps=2)
    _, got = _train("accelerate-disk-offload", tmp_path, optimizer="mezo-gv", steps=2)
    assert got["losses"] == ref["losses"] and got["ledger"] == ref["ledger"]
    assert all(torch.equal(got["weights"][n], w) for n, w in ref["weights"].items())


@pytest.mark.parametrize("placement", ["accelerate-cpu-offload", "accelerate-disk-offload", "place-offload-cpu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
def test_evaluation_perturbs_the_placed_weights_leaves_them_exact_and_no_hook_behind(placement, dtype, tmp_path):
    model = tiny_model("opt").to(dtype)
    resident = tiny_model("opt").to(dtype)
    PLACEMENTS[placement](model, tmp_path)
    batch = _batch()
    engine, ref_engine = Engine(model), Engine(resident)
    before = {n: p.clone() for n, p in named_blocks(model)}
    placement_hooks = {name: getattr(m, "_hf_hook", None) for name, m in model.named_modules()}
    seen = {}

    def closure():
        seen["torch"] = sum(len(m._forward_pre_hooks) for m in model.modules())
        seen["wrapped"] = sum(getattr(m, "_hf_hook", None) is not placement_hooks[n] for n, m in model.named_modules())
        return _closure(model, batch)()

    d = Direction.single(5)
    perturbed = engine.evaluate(closure, d, 1e-2)
    assert perturbed == ref_engine.evaluate(_closure(resident, batch), d, 1e-2)
    assert perturbed != engine.loss(_closure(model, batch))  # the perturbation reached the forward
    assert seen["torch"] + seen["wrapped"] > 0  # the engine's hooks were there during the forward ...
    assert sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules()) == 0  # ... and are gone
    assert all(getattr(m, "_hf_hook", None) is placement_hooks[n] for n, m in model.named_modules())
    for n, p in named_blocks(model):
        assert torch.equal(p, before[n]), n
    assert all(p.device.type == "meta" for n, p in model.named_parameters() if ".layers." in n)


def test_an_exception_in_the_forward_restores_the_placement_hooks(tmp_path):
    model = tiny_model("opt")
    _accelerate_cpu(model, tmp_path)
    hooks = {n: getattr(m, "_hf_hook", None) for n, m in model.named_modules()}

    def boom():
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        Engine(model).evaluate(boom, Direction.single(1), 1e-3)
    assert all(getattr(m, "_hf_hook", None) is hooks[n] for n, m in model.named_modules())


def test_streamed_blocks_cross_once_per_forward_and_a_stale_prefetch_is_never_used(tmp_path):
    model, resident = tiny_model("opt"), tiny_model("opt")
    group = place(model, offload="cpu")._l2o_stream
    batch = _batch()
    engine, ref = Engine(model), Engine(resident)
    engine.evaluate(_closure(model, batch), Direction.single(3), 1e-3)
    assert group.uploads == len(group.hooks) == 2  # one copy of each block per forward, the second prefetched
    group.hooks[1].prefetch()  # a copy staged by a forward that never reached block 1 ...
    engine.update(Direction.single(3), 0.5)  # ... then the weights change
    ref.update(Direction.single(3), 0.5)
    assert engine.loss(_closure(model, batch)) == ref.loss(_closure(resident, batch))


def test_a_block_the_host_cannot_pin_is_streamed_from_pageable_memory(monkeypatch):
    """Streaming to a GPU pins each block's home; where pinning fails (the host cannot lock more memory) the
    home stays in pageable memory, counted, instead of the placement failing."""
    from types import SimpleNamespace

    from l2o.streaming import StreamHook

    def refuse(self, *args, **kwargs):
        raise RuntimeError("CUDA error: out of memory (cudaHostAlloc)")

    monkeypatch.setattr(torch.Tensor, "pin_memory", refuse)
    block = tiny_model("opt").model.decoder.layers[0]
    before = {n: p.detach().clone() for n, p in block.named_parameters()}
    group = SimpleNamespace(device=torch.device("cuda"), unpinned=0)  # a GPU execution device, as far as pinning sees
    hook = StreamHook(group)
    hook.init_hook(block)
    assert group.unpinned == len(before) > 0
    assert hook.weights_map.keys() == before.keys() and all(torch.equal(hook.weights_map[n], before[n]) for n in before)
    assert all(p.device.type == "meta" for p in block.parameters())


def test_state_dict_sees_the_homes_and_loading_writes_them(tmp_path):
    model, resident = tiny_model("opt"), tiny_model("opt")
    _accelerate_disk(model, tmp_path)
    place_state = model.state_dict()
    assert all(v.device.type != "meta" for v in place_state.values()) is False  # accelerate alone: placeholders
    from l2o.placement import see_through

    see_through(model)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    assert all(torch.equal(saved[k], v) for k, v in resident.state_dict().items())
    Engine(model).update(Direction.single(9), 0.3)
    moved = homes(model)["model.decoder.layers.1.fc1.weight"].clone()
    assert not torch.equal(moved, saved["model.decoder.layers.1.fc1.weight"])
    model.load_state_dict(saved)
    assert torch.equal(homes(model)["model.decoder.layers.1.fc1.weight"], saved["model.decoder.layers.1.fc1.weight"])
    batch = _batch()
    assert Engine(model).loss(_closure(model, batch)) == Engine(resident).loss(_closure(resident, batch))


def test_trainable_weights_in_read_only_checkpoint_files_are_refused(tmp_path):
    from accelerate import dispatch_model
    from safetensors.torch import save_file

    model = tiny_model("opt")
    state = {k: v.contiguous() for k, v in model.state_dict().items() if "layers.1." in k}
    save_file(state, str(tmp_path / "w.safetensors"))
    index = {k: {"safetensors_file": str(tmp_path / "w.safetensors"), "weight_name": k, "dtype": "float32"}
             for k in state}
    dmap = {"model.decoder.embed_tokens": "cpu", "model.decoder.embed_positions": "cpu",
            "model.decoder.final_layer_norm": "cpu", "model.decoder.layers.0": "cpu",
            "model.decoder.layers.1": "disk", "lm_head": "cpu"}
    dispatch_model(model, dmap, main_device="cpu", offload_dir=str(tmp_path), offload_index=index)
    with pytest.raises(PlacementError, match="read-only file"):
        build_optimizer("mezo", model, lr=1e-3, eps=1e-3)


def test_the_differentiable_path_refuses_offloaded_weights(tmp_path):
    model = tiny_model("opt")
    place(model, offload="cpu")
    engine = Engine(model)
    with pytest.raises(OffloadedBackward):
        with engine.differentiable(Direction.single(1), 1e-3, torch.ones(len(engine.blocks), requires_grad=True)):
            pass


def test_bad_placements_are_refused_in_one_sentence(tmp_path):
    with pytest.raises(PlacementError, match="not both"):
        place(tiny_model("opt"), device_map="auto", offload="cpu")
    with pytest.raises(PlacementError, match="--offload must be"):
        place(tiny_model("opt"), offload="gpu")
    with pytest.raises(PlacementError, match="--device-map must be"):
        place(tiny_model("opt"), device_map="everywhere")
    with pytest.raises(PlacementError, match="needs place"):
        place(tiny_model("opt"), offload="disk")
