"""Why capture can be trusted: tiny random models of every family (tiny_models) and the ablation proof that a
captured expert is exactly one whose removal changes the token's output (verification)."""
