"""Altair chart builders: pure functions from a tidy DataFrame to a chart, one module per view."""
