"""Operator options from the streamlit command line (after `--`)."""

from __future__ import annotations

from app.operator import OperatorOptions, operator_options


def test_model_and_device_from_the_command_line() -> None:
    """`-- --model X --device auto-map` sets the default model and device; remote code stays off."""
    options = operator_options(("--model", "mistralai/Mixtral-8x7B-v0.1", "--device", "auto-map"))
    assert options == OperatorOptions("mistralai/Mixtral-8x7B-v0.1", "auto-map", False)


def test_remote_code_only_when_asked() -> None:
    """trust_remote_code is off unless the operator passes the flag."""
    assert operator_options(()).trust_remote_code is False
    assert operator_options(("--trust-remote-code",)).trust_remote_code is True


def test_bad_or_unknown_arguments_fall_back() -> None:
    """A bad device or an unknown flag never stops the server."""
    assert operator_options(("--device", "tpu")) == OperatorOptions()
    assert operator_options(("--unknown", "1")) == OperatorOptions()
