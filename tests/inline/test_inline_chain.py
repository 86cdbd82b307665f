"""The Chain addon: members' hooks run in order, async ones awaited, failures isolated."""

from __future__ import annotations

import asyncio
import logging

import pytest
from mitmproxy import exceptions

from inline.chain import Chain


class Recorder:
    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log

    def request(self, flow: object) -> None:
        self.log.append(f"{self.name}.request")

    def configure(self, updated: set[str]) -> None:
        self.log.append(f"{self.name}.configure")


class AsyncRecorder(Recorder):
    async def request(self, flow: object) -> None:
        await asyncio.sleep(0)
        self.log.append(f"{self.name}.request")

    async def response(self, flow: object) -> None:
        self.log.append(f"{self.name}.response")


class Broken(Recorder):
    def request(self, flow: object) -> None:
        raise RuntimeError("boom")

    def configure(self, updated: set[str]) -> None:
        raise exceptions.OptionsError("bad option")


def test_sync_hooks_in_order() -> None:
    log: list[str] = []
    chain = Chain([Recorder("a", log), Recorder("b", log)])
    assert chain.request(object()) is None
    assert log == ["a.request", "b.request"]


def test_async_members_are_awaited_in_order() -> None:
    log: list[str] = []
    chain = Chain([Recorder("a", log), AsyncRecorder("b", log), Recorder("c", log)])
    asyncio.run(chain.request(object()))
    assert log == ["a.request", "b.request", "c.request"]
    asyncio.run(chain.response(object()))
    assert log[-1] == "b.response"


def test_hooks_no_member_has_are_absent() -> None:
    chain = Chain([Recorder("a", [])])
    assert not hasattr(chain, "response") and not hasattr(chain, "error")


def test_a_failing_member_is_logged_and_the_rest_still_run(caplog: pytest.LogCaptureFixture) -> None:
    log: list[str] = []
    chain = Chain([Broken("x", log), Recorder("b", log)])
    with caplog.at_level(logging.ERROR):
        chain.request(object())
    assert log == ["b.request"]
    assert "Addon error: Broken.request failed" in caplog.text


def test_configure_errors_propagate() -> None:
    chain = Chain([Recorder("a", []), Broken("x", [])])
    with pytest.raises(exceptions.OptionsError):
        chain.configure({"anything"})
