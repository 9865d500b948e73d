"""`python -m moe_core` / `moe-core`: the commands (main), their shared argument types (arguments), and the
commands that live with their subject (show: engine dumps; corpus: trace-corpus and summarize; verify)."""
