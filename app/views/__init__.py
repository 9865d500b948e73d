"""One module per view. Each exposes TITLE, SHORT_TITLE, NOTICE, EXPLAINER and draw(context)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from app.state import Settings
from moe_core.batches import LabBatch
from moe_core.capacity.forward import Counterfactual
from moe_core.experts import ExpertStudy
from moe_core.traces.types import RoutingTrace


def _none(*_args: object) -> None:
    return None


@dataclass(frozen=True)
class ViewContext:
    """Everything a view reads. `domain_batch` traces the built-in multi-domain batch and `expert_study` runs
    A Closer Look at the current layer, both on demand and None when no model is loaded (an uploaded trace)."""

    trace: RoutingTrace
    settings: Settings
    layer_row: int  # row of settings.layer in the trace's [L, ...] arrays
    domain_batch: Callable[[], RoutingTrace | None]
    expert_study: Callable[[], ExpertStudy | None]
    # The capacity lab, both None without a model: the built-in equal-length batch, and the capacity-bound
    # forward of some texts at (capacity factor, policy, group[, max_tokens]).
    lab_batch: Callable[[], LabBatch | None] = _none
    counterfactual: Callable[..., Counterfactual] | None = None
    continued_at: int | None = None  # character of the text where "Let the model continue" writing begins
    model_id: str | None = None  # the page's model (None: an uploaded trace)
    # The Compare view's side B: these very tokens routed by (model, revision, dtype); None without a model
    other_run: Callable[[str, str | None, str | None], RoutingTrace] | None = None

    @property
    def layer(self) -> int:
        """The model's layer number of the chosen MoE layer (what the page calls it)."""
        return self.trace.model.moe_layers[self.layer_row]
