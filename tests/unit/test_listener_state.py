"""The listener's per-connection state stays in slots (proxy/listener.py, issue 17): uvicorn's
attributes alone in the instance dict keep its keys shared among connections (CPython shares
them only up to 30), ~1 KB less per open connection."""

from __future__ import annotations

import ast
import asyncio
import inspect
import sys
import textwrap

from uvicorn import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from proxy.listener import GuardedHttpProtocol, ProxyConfig

# The classes whose code runs as GuardedHttpProtocol's: it and its parts.
PARTS = [c for c in GuardedHttpProtocol.__mro__ if c.__module__.startswith("proxy.")]


def _protocols() -> tuple[HttpToolsProtocol, GuardedHttpProtocol]:
    async def make() -> tuple[HttpToolsProtocol, GuardedHttpProtocol]:
        plain_config = Config(app=_app, http="httptools")
        plain_config.load()
        config = ProxyConfig(_app, head_timeout=10, max_header_bytes=16384)
        config.load()
        plain = HttpToolsProtocol(config=plain_config, server_state=ServerState(), app_state={})
        guarded = GuardedHttpProtocol(config=config, server_state=ServerState(), app_state={})
        return plain, guarded

    return asyncio.run(make())


async def _app(scope: object, receive: object, send: object) -> None:
    """Never called: the protocols are only built."""


def test_the_instance_dict_holds_only_uvicorns_attributes() -> None:
    plain, guarded = _protocols()
    assert set(vars(guarded)) == set(vars(plain))
    # Shared keys: the dict is a small values array, not a table of its own (~1.6 KB). Should
    # uvicorn itself come to set 30 attributes, this fails with no change of ours: the saving
    # is gone, and the listener's notes (issue 17) need another look.
    assert sys.getsizeof(vars(guarded)) < 1024, (
        f"{len(vars(guarded))} attributes in the instance dict: its keys are no longer shared"
    )


def test_every_attribute_the_listener_sets_has_a_slot_or_is_uvicorns() -> None:
    """An attribute added to the listener or a part of it without a slot lands in the dict
    and takes every connection past the shared-key limit again."""
    plain, _ = _protocols()
    # uvicorn sets ``url`` when a message begins, not in __init__: its own, in the dict.
    allowed = set(GuardedHttpProtocol.__slots__) | set(vars(plain)) | {"url"}
    stray = set()
    for part in PARTS:
        for node in ast.walk(ast.parse(textwrap.dedent(inspect.getsource(part)))):
            targets = (
                node.targets
                if isinstance(node, ast.Assign)
                else [node.target]
                if isinstance(node, (ast.AnnAssign, ast.AugAssign))
                else []
            )
            for target in targets:
                for leaf in ast.walk(target):
                    if (
                        isinstance(leaf, ast.Attribute)
                        and isinstance(leaf.value, ast.Name)
                        and leaf.value.id == "self"
                        and leaf.attr not in allowed
                    ):
                        stray.add(f"{part.__name__}: self.{leaf.attr}")
    assert not stray, sorted(stray)
