"""How far a quantized model's logits are from the original's, on a fixed prompt set."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

ACCURACY_PROMPTS = (
    "The quick brown fox jumps over the lazy dog.",
    "int8 quantization keeps one scale per output channel.",
    "Kubernetes schedules the inference pod onto a GPU node.",
    "<user>What is continuous batching?</user>\n<assistant>",
)


def prompt_logits(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[torch.Tensor]:
    """Logits `[tokens, vocab]` (float32, on CPU) at every position of each accuracy prompt."""
    device = next(model.parameters()).device
    with torch.inference_mode():
        return [
            model(input_ids=tokenizer(text, return_tensors="pt").input_ids.to(device)).logits[0].float().cpu()
            for text in ACCURACY_PROMPTS
        ]


def logits_agreement(reference: list[torch.Tensor], candidate: list[torch.Tensor]) -> dict[str, float]:
    """The worst prompt's relative error ||q - r|| / ||r||, and top-1 agreement over all positions."""
    pairs = list(zip(reference, candidate, strict=True))
    relative = max(((c - r).norm() / r.norm()).item() for r, c in pairs)
    agree = sum((r.argmax(-1) == c.argmax(-1)).sum().item() for r, c in pairs)
    positions = sum(r.shape[0] for r in reference)
    return {"max_relative_error": relative, "top1_agreement": agree / positions}
