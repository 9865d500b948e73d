"""Placeholder: being built."""

from __future__ import annotations

import streamlit as st

from app.views import ViewContext

TITLE = "Gate weights"


def draw(context: ViewContext) -> None:
    st.info("This view is being built.")
