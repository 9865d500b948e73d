"""RoutingTrace: the one immutable record every analysis, chart, export and CLI command reads.

Pure data (numpy arrays and plain metadata, no reference to the model), so it can be cached,
pickled, saved and loaded back. Shapes: T tokens (all sequences flattened in order), L MoE layers,
E routed experts, k experts per token.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

DROPPED = -1  # value in `experts` where the model itself dropped a slot (real capacity, e.g. Switch)
SUM_TO_ONE = frozenset({"softmax", "probabilities"})  # ModelInfo.scoring values whose scores sum to 1 over E


@dataclass(frozen=True)
class ModelInfo:
    """What a reader of a trace needs to know about the model that produced it."""

    name: str
    architecture: str  # transformers model_type, e.g. "mixtral"
    num_experts: int  # routed experts E
    top_k: int  # k
    scoring: str  # how `probs` came from `logits`: "softmax", "sigmoid", ...
    num_layers: int  # all decoder layers, dense ones included
    moe_layers: tuple[int, ...]  # the model's layer index of each traced MoE layer
    num_shared_experts: int = 0
    context_length: int | None = None
    device: str = "cpu"
    dtype: str = "float32"
    notes: tuple[str, ...] = ()  # quirks worth showing a reader (e.g. weights that do not sum to 1)


@dataclass(frozen=True)
class Tokens:
    """The traced tokens. `text` is raw (escape it when rendering).

    Tokens that share one character span (bytes of one multi-byte character) carry the character
    on the first of them and "" on the rest, so joining `text` per sequence gives back the input.
    """

    ids: np.ndarray  # [T] int
    text: tuple[str, ...]  # [T]
    offsets: np.ndarray  # [T, 2] character offsets into texts[sequence]
    sequence: np.ndarray  # [T] which input text
    position: np.ndarray  # [T] position within its sequence

    def __len__(self) -> int:
        return len(self.ids)


OPTIONAL_ARRAYS = {  # optional array -> what a reader calls it
    "logits": "router logits",
    "probs": "router scores",
    "weights": "gate weights",
}


class MissingRouting(ValueError):
    """An analysis needs an array this (compact) trace does not hold."""


def needs_sentence(absent: tuple[str, ...], needed_by: str, plural: bool = False) -> str:
    """'this trace has no router scores: the gate view needs them' (one sentence, the same everywhere)."""
    what = " or ".join(OPTIONAL_ARRAYS[name] for name in absent)
    return f"this trace has no {what}: {needed_by} {'need' if plural else 'needs'} them"


def unranked_sentence(needed_by: str) -> str:
    """'this trace does not say which of its experts came first …' (one sentence, the same everywhere)."""
    return f"this trace records each token's experts but not which came first (see its notes for why): {needed_by}"


def rank_slots(experts: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slots in descending gate weight, so slot 0 is the first choice (stable: ties keep the model's order).
    Some routers hand their experts unsorted (DeepSeek-V3's top-k with sorted=False; engines' grouped top-k)."""
    order = np.argsort(-weights, axis=-1, kind="stable")
    return np.take_along_axis(experts, order, axis=-1), np.take_along_axis(weights, order, axis=-1)


@dataclass(frozen=True)
class RoutingTrace:
    """Routing of every token at every MoE layer, as the model computed it.

    logits  [L, T, E] float: the router's raw scores                                           (optional)
    probs   [L, T, E] float: the model's own scoring of them (softmax, sigmoid, ...)           (optional)
    experts [L, T, k] int:   the experts each token was actually sent to (DROPPED where the model dropped it)
    weights [L, T, k] float: the combine weights actually applied to those experts' outputs    (optional)

    A *compact* trace lacks some of the optional arrays: engine dumps carry expert ids only, large traces may keep
    experts and weights without the [L, T, E] scores. Readers call `require` and say what they need.
    """

    model: ModelInfo
    texts: tuple[str, ...]
    tokens: Tokens
    logits: np.ndarray | None
    probs: np.ndarray | None
    experts: np.ndarray
    weights: np.ndarray | None
    truncated: tuple[bool, ...] = field(default=())  # per text: was it cut to the context length?
    slots_ranked: bool = True  # is slot 0 each token's first choice? (False: an engine wrote the set, by expert id)
    generated_from: tuple[int | None, ...] = ()  # per text: the position where the model's own writing begins

    def __post_init__(self) -> None:
        num_layers, num_tokens = len(self.model.moe_layers), len(self.tokens)
        expected = {
            "logits": (num_layers, num_tokens, self.model.num_experts),
            "probs": (num_layers, num_tokens, self.model.num_experts),
            "experts": (num_layers, num_tokens, self.model.top_k),
            "weights": (num_layers, num_tokens, self.model.top_k),
        }
        if self.experts is None:
            raise ValueError("RoutingTrace.experts is required")
        for name, shape in expected.items():
            value = getattr(self, name)
            if value is not None and value.shape != shape:
                raise ValueError(f"RoutingTrace.{name} has shape {value.shape}, expected {shape}")

    def has(self, name: str) -> bool:
        """Whether the optional array `name` ("logits", "probs", "weights") is in this trace."""
        return getattr(self, name) is not None

    def missing(self, *names: str) -> tuple[str, ...]:
        return tuple(name for name in names if not self.has(name))

    def require(self, *names: str, needed_by: str) -> None:
        """Raise MissingRouting, in one sentence a reader can act on, if any of `names` is absent."""
        if absent := self.missing(*names):
            raise MissingRouting(needs_sentence(absent, needed_by))

    @property
    def num_sequences(self) -> int:
        return len(self.texts)

    def generated(self) -> np.ndarray:
        """[T] bool: the tokens the model wrote itself (phase "generated"), as opposed to its prompt."""
        starts = np.asarray([-1 if s is None else s for s in self.generated_from] or [-1] * self.num_sequences)
        start = starts[self.tokens.sequence]
        return (start >= 0) & (self.tokens.position >= start)

    def unranked_sentence(self, needed_by: str) -> str | None:
        """None when slot 0 is each token's first choice; else the one sentence a first-choice reader shows."""
        if self.slots_ranked:
            return None
        return unranked_sentence(needed_by)

    def layer_index(self, model_layer: int) -> int:
        """Row in the [L, ...] arrays of the model's layer `model_layer`."""
        try:
            return self.model.moe_layers.index(model_layer)
        except ValueError:
            raise ValueError(
                f"layer {model_layer} is not an MoE layer; MoE layers are {list(self.model.moe_layers)}"
            ) from None


def gate_weights(trace: RoutingTrace) -> np.ndarray:
    """[L, T, k] the combine weights, NaN where the trace has none (an engine dump): readers that only shade or
    label by weight then show "unknown" rather than a made-up value."""
    return trace.weights if trace.weights is not None else np.full(trace.experts.shape, np.nan)
