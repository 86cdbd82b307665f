"""One mitmproxy addon that runs the gatewatch addons in order: fewer hook dispatches.

mitmproxy's addon manager dispatches every hook of every flow to every
addon: for each of ``requestheaders``, ``request``, ``responseheaders`` and
``response`` it walks the whole chain twice (the hook, then an ``update``
event), looking each hook up by name on each addon. With a dozen gatewatch
addons that walking was a fifth of the gateway's CPU in a py-spy profile.
:class:`Chain` registers as ONE addon and calls the members' hooks itself,
in list order, with the same semantics mitmproxy gives them:

- a hook that returns an awaitable is awaited before the next member runs;
- the lifecycle hooks (``load``, ``configure``, ``running``, ``done``) reach
  every member, so options are declared and parsed exactly as before;
- a member's exception in a flow or lifecycle hook is logged as an addon
  error, as mitmproxy's ``safecall`` does, and the next members still run
  (so a failing metrics hook cannot stop the event shipper);
  ``OptionsError`` from ``configure`` propagates, as it must.

Members stay ordinary addons, tested on their own; only the minimal master
(:mod:`inline.serve`) wraps them. Hooks the members do not implement are
never called.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from typing import Any

logger = logging.getLogger(__name__)

#: Hooks forwarded to the members (every hook a gatewatch addon implements).
FLOW_HOOKS = ("requestheaders", "request", "responseheaders", "response", "error")
LIFECYCLE_HOOKS = ("running", "done")


class Chain:
    """Addon that forwards hooks to ``members`` in order (see the module docstring)."""

    def __init__(self, members: Sequence[Any]) -> None:
        self.members = list(members)
        # Only the hooks some member has, each with its members' bound methods, in order.
        self._hooks: dict[str, list[Callable]] = {}
        for name in FLOW_HOOKS + LIFECYCLE_HOOKS:
            funcs = [getattr(m, name) for m in self.members if callable(getattr(m, name, None))]
            if funcs:
                self._hooks[name] = funcs
                setattr(self, name, self._forwarder(funcs))

    @staticmethod
    def _forwarder(funcs: list[Callable]) -> Callable:
        if not any(inspect.iscoroutinefunction(f) for f in funcs):
            def forward_sync(*args: Any) -> None:
                for func in funcs:
                    try:
                        func(*args)
                    except Exception:
                        _log_addon_error(func)
            return forward_sync

        async def forward(*args: Any) -> None:
            for func in funcs:
                try:
                    result = func(*args)
                    if result is not None and inspect.isawaitable(result):
                        await result
                except Exception:
                    _log_addon_error(func)
        return forward

    def load(self, loader: Any) -> None:
        """Let every member declare its options."""
        for member in self.members:
            if hasattr(member, "load"):
                member.load(loader)

    def configure(self, updated: set[str]) -> None:
        """Let every member parse its updated options (``OptionsError`` propagates)."""
        for member in self.members:
            if hasattr(member, "configure"):
                member.configure(updated)


def _log_addon_error(func: Callable) -> None:
    # The words mitmproxy's safecall uses, so log scanners and tests see the same thing.
    owner = type(getattr(func, "__self__", func)).__name__
    logger.error("Addon error: %s.%s failed", owner, getattr(func, "__name__", "?"), exc_info=True)
