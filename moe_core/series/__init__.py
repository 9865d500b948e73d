"""A checkpoint series: one fixed text set traced at every checkpoint of a training run (store: the folder and
its manifest, numpy only; runner: the tracing, torch), read by moe_core.analyses.series."""
