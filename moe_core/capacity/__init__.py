"""Expert capacity: the rule and the static simulation on a trace (simulate: numpy only, instant), and the
capacity-bound forward that applies the same rule inside the model's pass (forward: torch)."""
