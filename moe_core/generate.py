"""Let the model continue a text, so its own writing can be traced too.

Greedy decoding: the same text always gives the same continuation, which keeps share links and screenshots
reproducible. The continuation is appended to the text and the whole text is then traced in one forward pass,
exactly as if it had been typed.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from moe_core.capture.hooks import forward_lock
from moe_core.capture.record import context_length
from moe_core.defaults import MAX_NEW_TOKENS


@torch.inference_mode()
def continue_text(model: nn.Module, tokenizer: Any, text: str, max_new_tokens: int = 40) -> str:
    """`text` followed by the model's greedy continuation of up to `max_new_tokens` tokens (fewer near the
    context limit, or where the model ends the text)."""
    if getattr(model.config, "is_encoder_decoder", False):
        raise ValueError("an encoder-decoder model writes a separate output, not a continuation of the text")
    if not text.strip():
        raise ValueError("empty text: give the model something to continue")
    if not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise ValueError(f"max_new_tokens must be between 1 and {MAX_NEW_TOKENS}, got {max_new_tokens}")
    batch = tokenizer(text, return_tensors="pt")
    room = (context_length(model) or 1 << 30) - batch["input_ids"].shape[1]
    if room < 1:
        return text
    device = next(model.parameters()).device
    inputs = {key: value.to(device) for key, value in batch.items() if key in ("input_ids", "attention_mask")}
    end = tokenizer.eos_token_id
    with forward_lock(model):
        output = model.generate(
            **inputs,
            max_new_tokens=min(max_new_tokens, room),
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end,
        )
    new_ids = output[0, inputs["input_ids"].shape[1] :].tolist()
    if end is not None and end in new_ids:
        new_ids = new_ids[: new_ids.index(end)]
    return text + tokenizer.decode(new_ids, skip_special_tokens=True)
