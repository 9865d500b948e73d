"""Recording routing from a live model: find its MoE blocks and their adapter (routers), hook them per caller on a
shared model (hooks), tokenise (tokens), and read what each block's experts really consumed (record; generic for
families without an adapter). The one place that runs a model to make a trace."""
