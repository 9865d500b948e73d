"""The views, in the order the page offers them: URL key -> the module under app/views that draws it.

The one list of views, kept outside the app.views package so that importing it runs no view code: app.state
reads the keys (a link's `view=` must be one of them), app.main imports the modules from it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

VIEW_MODULE_NAMES: dict[str, str] = {
    "routing": "token_routing",
    "gates": "gate_weights",
    "load": "expert_load",
    "capacity": "capacity",
    "flow": "layer_flow",
    "compare": "compare",
    "training": "training",
}
VIEWS = tuple(VIEW_MODULE_NAMES)


def view_module(view: str) -> ModuleType:
    """The module that draws `view` (TITLE, SHORT_TITLE, NOTICE, EXPLAINER, draw(context); optionally
    offered(model_id), where the view needs something only some models have)."""
    return importlib.import_module(f"app.views.{VIEW_MODULE_NAMES[view]}")
