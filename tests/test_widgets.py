from __future__ import annotations

import ipywidgets
import pytest

from histolab_utils.widgets import explore, is_headless


@pytest.mark.parametrize("value, expected", [("1", True), ("true", True), ("0", False), ("", False)])
def test_headless_flag(monkeypatch, value, expected):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("HISTO_HEADLESS", value)
    assert is_headless() is expected


def test_headless_explore_calls_update_once_with_defaults_and_builds_no_widget(monkeypatch):
    monkeypatch.setenv("HISTO_HEADLESS", "1")
    monkeypatch.setattr(ipywidgets, "interactive", lambda *a, **k: pytest.fail("built a widget headless"))
    calls = []

    def update(size=7, name="a"):
        calls.append((size, name))
        return size * 2

    assert explore(update, size=(1, 10, 1), name=["a", "b"]) == 14
    assert calls == [(7, "a")]


def test_controls_need_defaults(monkeypatch):
    monkeypatch.setenv("HISTO_HEADLESS", "1")
    with pytest.raises(TypeError, match=r"default value for each control; none for \['size'\]"):
        explore(lambda size, name="a": None, size=(1, 10, 1), name=["a"])


def test_interactive_explore_builds_the_widgets(monkeypatch):
    monkeypatch.delenv("HISTO_HEADLESS", raising=False)
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setattr("IPython.display.display", lambda *a, **k: None)

    def update(size=3):
        return size + 1

    assert explore(update, size=(0, 10, 1)) == 4
