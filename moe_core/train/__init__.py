"""Training and evaluating the bundled demo model (see `python -m moe_core.train --help`)."""
