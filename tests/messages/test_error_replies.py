"""A handler's exception as the error reply (fedsim.messages.error_replies): every error code fedsim names is one
Flower has."""

from __future__ import annotations

import ast
from pathlib import Path

from helpers.patching import dotted_name


def test_every_error_code_fedsim_names_is_one_flower_has():
    """Read, not patched: `flwr.common.constant.ErrorCode`, which Flower's public packages do not export (fedsim's
    messages.error_replies, messages.carried, server.participation). Guards that each `ErrorCode.NAME` fedsim's code
    spells is still one of Flower's codes: a renamed code would fail only on the error path that uses it."""
    from flwr.common.constant import ErrorCode

    import fedsim

    named = {
        node.attr
        for path in Path(fedsim.__file__).parent.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute) and dotted_name(node.value) == "ErrorCode"
    }
    assert named and not {name for name in named if not hasattr(ErrorCode, name)}
