"""Names that every layer shares and that need neither torch nor transformers: the bundled models and the device
choices. The command line builds its whole parser from these, so `--help`, `show` and `summarize` start without
importing the deep-learning stack (about 5 s)."""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "assets"  # beside moe_core in the checkout and in site-packages
DEMO_MODEL = "demo-mixtral"
BUNDLED_MODELS: dict[str, Path] = {DEMO_MODEL: ASSETS / "models" / DEMO_MODEL}
DEVICE_CHOICES = ("auto", "cpu", "cuda", "auto-map")
CORPUS_BATCH_TOKENS = 8192  # trace-corpus: padded tokens per forward pass
CORPUS_SHARD_DOCUMENTS = 256  # trace-corpus: documents per shard, the unit of resuming
VERIFY_LAYERS = 4  # MoE layers the ablation proof checks, in the app's badge and `verify`: E + 1 replays each
MAX_NEW_TOKENS = 256  # tokens the model may write per request: a longer continuation is better typed
