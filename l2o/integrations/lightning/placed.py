"""A LightningModule whose `model` may be placed by l2o.placement (layers across devices, or streamed from
CPU memory) keeps that placement: Lightning's `.to(device)` would pull every layer onto one device (and
cannot copy an offloaded weight's meta placeholder). Both apps' modules mix this in."""

from __future__ import annotations


class KeepsPlacement:
    """Mixin for a LightningModule with its LLM in `self.model`: `_apply` (`.to`, `.cuda`, `.float`, ...) passes
    over a placed model and reaches everything else as usual."""

    def _apply(self, fn, recurse=True):
        from l2o.placement import placed

        model = self._modules.get("model")
        if model is None or not placed(model):
            return super()._apply(fn, recurse)
        self._modules["model"] = None
        try:
            return super()._apply(fn, recurse)
        finally:
            self._modules["model"] = model
