"""The trained model's weights as an inference engine loads them: plain checkpoint names, LoRA merged in; or,
for an engine that serves LoRA itself, the adapter alone."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch


@torch.no_grad()
def merged_named_weights(model: Any) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs of `model` named as its `save_pretrained` checkpoint (without peft) names them.

    For a peft LoRA model each adapted weight is yielded as base + scale * B @ A,
    computed out of place (the trained model is not touched, so no merge/unmerge
    rounding accumulates over iterations); the adapter matrices themselves are
    not yielded. Any other model yields its state dict as is.
    """
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    if not isinstance(model, PeftModel):
        yield from model.state_dict().items()
        return
    base = model.get_base_model()
    adapter = model.active_adapter
    deltas = {f"{name}.base_layer.weight": module for name, module in base.named_modules()
              if isinstance(module, LoraLayer)}
    for name, tensor in base.state_dict().items():
        if ".lora_" in name:
            continue
        if name in deltas:
            tensor = tensor + deltas[name].get_delta_weight(adapter).to(tensor.dtype)
        yield name.replace(".base_layer.", "."), tensor


def lora_adapter(model: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A peft LoRA model's adapter as peft's `save_pretrained` writes it: the tensors, named as in
    adapter_model.safetensors, and the adapter_config.json dict."""
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(model), adapter_config(model.peft_config[model.active_adapter])


def adapter_config(peft_config: Any) -> dict[str, Any]:
    """A peft `LoraConfig` as adapter_config.json holds it (JSON-ready: sets become sorted lists)."""
    return {key: sorted(value) if isinstance(value, set) else value for key, value in peft_config.to_dict().items()}
