"""Pure functions from a RoutingTrace (and capacity results) to tidy DataFrames, one module per view.

No Streamlit, no Altair: each function is cacheable and testable with hand-built traces.
"""
