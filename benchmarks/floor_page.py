"""Streamlit's own floor for bench_startup: a title and one Altair bar chart, nothing else.

A new visitor's first page of the app is measured against this page, served by the same Streamlit on the same
machine in the same run: the ratio is what the app adds to what any Streamlit page with a chart costs.
"""

import altair as alt
import pandas as pd
import streamlit as st

st.title("Floor")
bars = pd.DataFrame({"expert": [f"E{i}" for i in range(8)], "tokens": [5, 9, 3, 7, 4, 8, 6, 2]})
st.altair_chart(alt.Chart(bars).mark_bar().encode(x="expert:N", y="tokens:Q"), width="stretch")
