"""Routing while the model writes (issue 17): capture during `model.generate()` with the KV cache on.

The prefill pass routes the prompt; each decode step routes the one token it feeds back; one more cached step
routes the last token written (generate() never feeds it back), so every generated token has the routing the
model used for it. The records are stitched into one RoutingTrace whose `generated_from` marks where the
model's own writing begins (phase "prompt" / "generated"). The same per-caller hooks as trace(): visitors
sharing one model never see each other's routing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from moe_core.capture.hooks import forward_lock
from moe_core.capture.record import model_info, recording, tokenize_texts
from moe_core.capture.routers import SCORINGS, adapter_of, find_moe_blocks, is_generic
from moe_core.defaults import MAX_NEW_TOKENS
from moe_core.traces.types import RoutingTrace, Tokens, rank_slots


def token_pieces(tokenizer: Any, ids: list[int]) -> list[str]:
    """Each generated token's text, as engine dumps show theirs (engines.common.decoded_pieces)."""
    from moe_core.engines.common import decoded_pieces

    return decoded_pieces(
        lambda part: tokenizer.decode(part, skip_special_tokens=False, clean_up_tokenization_spaces=False), ids
    )


def _unsupported(model: nn.Module) -> str | None:
    """Why generate_trace cannot record this model's writing, or None: it reads a decoder-only family of the
    adapter table."""
    if getattr(model.config, "is_encoder_decoder", False):
        return "generation capture reads a decoder-only model's own continuation; encoder-decoders (Switch) are not " \
            "covered yet"  # fmt: skip
    if is_generic(model):
        return "generation capture needs a family in the adapter table (remote code is traced whole)"
    return None


def supports_generation_capture(model: nn.Module) -> bool:
    """Whether generate_trace can record this model's writing (the app otherwise writes, then re-traces)."""
    return _unsupported(model) is None


def _check(model: nn.Module, text: str, max_new_tokens: int) -> None:
    if (reason := _unsupported(model)) is not None:
        raise ValueError(reason)
    if not text.strip():
        raise ValueError("empty text: give the model something to continue")
    if not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise ValueError(f"max_new_tokens must be between 1 and {MAX_NEW_TOKENS}, got {max_new_tokens}")


def _sampling(temperature: float | None, top_p: float | None, seed: int | None) -> dict[str, Any]:
    """generate()'s decoding arguments: greedy by default (reproducible links), sampling seeded when asked."""
    if temperature is None and top_p is None:
        return {"do_sample": False}
    if temperature is not None and not 0 < temperature <= 10:
        raise ValueError(f"temperature must be in (0, 10], got {temperature}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    torch.manual_seed(0 if seed is None else seed)
    return {"do_sample": True, "temperature": temperature or 1.0, "top_p": top_p or 1.0}


Watcher = Callable[[list[int], np.ndarray], None]  # (written ids routed so far, their first choices [n, L])


class _RoutedSoFar:
    """generate()'s streamer: after each decode step, the tokens the model has written whose routing is recorded
    (the token a step feeds back is the one written a step earlier) and their first-choice expert at every MoE
    layer, read from the same records the trace is built from. An exception from `watch` (a visitor who left)
    ends the generation."""

    def __init__(self, records: list[Any], watch: Watcher) -> None:
        self.records, self.watch = records, watch
        self.written: list[int] = []
        self.first: list[list[int]] = []
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate() hands the streamer the prompt's ids first
            self.prompt_seen = True
            return
        if self.written:  # this step fed back the previous written token: its routing is the last call's
            self.first.append([self._first_choice(record) for record in self.records])
            self.watch(self.written[: len(self.first)], np.asarray(self.first, dtype=np.int64))
        self.written.append(int(value.reshape(-1)[0]))

    def end(self) -> None:
        pass

    @staticmethod
    def _first_choice(record: Any) -> int:
        experts, weights = record.experts[-1].reshape(-1), record.weights[-1].reshape(-1)
        return int(experts[int(torch.argmax(weights))])


def _stitched(calls: list[torch.Tensor]) -> torch.Tensor:
    """One layer's calls (prefill [P, ...], then a row per decode step) as [P + steps, ...] on the CPU."""
    return torch.cat([call.reshape(-1, call.shape[-1]).cpu() for call in calls])


@torch.inference_mode()
def generate_trace(
    model: nn.Module, tokenizer: Any, text: str, max_new_tokens: int = 40, *, temperature: float | None = None,
    top_p: float | None = None, seed: int | None = None, name: str | None = None, watch: Watcher | None = None,
    max_time: float | None = None,
) -> RoutingTrace:  # fmt: skip
    """The prompt and the model's continuation of it, each token routed as the model routed it while writing.

    `watch(ids, first_choices)` is called after every decode step with the tokens written so far whose routing is
    known and their first-choice experts [n, L] (the app streams them); `max_time` bounds the seconds spent."""
    _check(model, text, max_new_tokens)
    tokenized = tokenize_texts(model, tokenizer, [text])
    prompt = tokenized.tokens
    device = next(model.parameters()).device
    inputs = {key: value.to(device) for key, value in tokenized.batch.items()}
    room = (getattr(model.config, "max_position_embeddings", None) or 1 << 30) - len(prompt)
    if room < 1:
        raise ValueError("the text already fills the model's context: nothing left to write")
    blocks, logits_index = find_moe_blocks(model, model.config.model_type)
    adapter = adapter_of(model)
    end = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end
    # generate() never feeds back the last token it writes: ask for one more and keep the tokens it routed
    # (every family's own cache, hybrid ones included, does the work; the extra token costs one LM head)
    with forward_lock(model), recording(blocks, logits_index, adapter.choice) as records:
        streamer = None if watch is None else _RoutedSoFar(records, watch)
        out = model.generate(**inputs, max_new_tokens=min(max_new_tokens, room) + 1, pad_token_id=pad,
                             use_cache=True, return_dict_in_generate=True, streamer=streamer, max_time=max_time,
                             **_sampling(temperature, top_p, seed))  # fmt: skip
    logits = torch.stack([_stitched(r.logits) for r in records]).float()
    experts = torch.stack([_stitched(r.experts) for r in records]).long()
    weights = torch.stack([_stitched(r.weights) for r in records]).float()
    total = experts.shape[1]  # the prompt and every generated token that was fed back
    new_ids = out.sequences[0, len(prompt) : total].tolist()
    if not len(prompt) <= total <= out.sequences.shape[1] or len(prompt) + len(new_ids) != total:
        raise RuntimeError(f"recorded {total} routed tokens for a {len(prompt)}-token prompt and "
                           f"{out.sequences.shape[1] - len(prompt)} written (a family that routes more than once "
                           "per step?)")  # fmt: skip
    pieces = token_pieces(tokenizer, new_ids)
    full_text = "".join(prompt.text) + "".join(pieces)
    ends = len("".join(prompt.text)) + np.cumsum([len(p) for p in pieces], dtype=np.int64)
    offsets = np.concatenate([prompt.offsets, np.stack([ends - [len(p) for p in pieces], ends], axis=1)]) if pieces \
        else prompt.offsets  # fmt: skip
    tokens = Tokens(
        ids=np.concatenate([prompt.ids, np.asarray(new_ids, dtype=np.int64)]),
        text=(*prompt.text, *pieces),
        offsets=offsets.astype(np.int64),
        sequence=np.zeros(total, dtype=np.int64),
        position=np.arange(total, dtype=np.int64),
    )
    ranked_experts, ranked_weights = rank_slots(experts.numpy(), weights.numpy())
    label = name or model.config.name_or_path or model.config.model_type
    info = model_info(model, blocks, label, logits.shape[-1], experts.shape[-1])
    return RoutingTrace(model=info, texts=(full_text,), tokens=tokens, logits=logits.numpy(),
                        probs=SCORINGS[adapter.scoring](logits).numpy(), experts=ranked_experts,
                        weights=ranked_weights, truncated=tokenized.truncated,
                        generated_from=(len(prompt),))  # fmt: skip
