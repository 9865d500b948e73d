"""What a session keeps between runs: every setting of app.state.Settings, whichever widgets this run draws.

Streamlit forgets the state of a widget left out of a run: a view's own widget (the gate view's token, the
Compare view's side B) vanished two runs after the visitor left the view, and the next run that read the
settings raised KeyError. Re-assigning each value at the start of a run keeps it."""

from __future__ import annotations

import contextlib

import streamlit as st
from streamlit.errors import StreamlitAPIException

from app.state import URL_KEYS


def keep_settings() -> None:
    """Re-assign every setting in the session; widgets already drawn in this run refuse it and keep theirs."""
    for key in URL_KEYS:
        if key in st.session_state:
            with contextlib.suppress(StreamlitAPIException):
                st.session_state[key] = st.session_state[key]
