"""The runnable examples in the detectors' docstrings run and give what they show."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["detectors.windows", "detectors.credential_stuffing", "detectors.bola", "detectors.latency",
           "detectors.decision_policy", "detectors.behaviour_features", "detectors.behaviour_model",
           "detectors.behaviour"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
