"""The Streamlit shell of MoE Routing Explorer: views render what moe_core computes."""
