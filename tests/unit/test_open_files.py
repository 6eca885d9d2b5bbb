"""Fitting the open-file limit to FOUNDRY_PROXY_MAX_CONNECTIONS (proxy/server.py); the check
on a real process started with a low limit is in tests/security/test_bounds_open_files.py."""

from __future__ import annotations

import resource

from proxy.server import FD_HEADROOM, open_files_target, open_files_wanted

INFINITY = resource.RLIM_INFINITY


def test_the_default_cap_wants_each_connection_twice_and_headroom() -> None:
    assert open_files_wanted(2048) == 2 * 2048 + FD_HEADROOM


def test_the_soft_limit_is_raised_to_what_is_wanted() -> None:
    assert open_files_target(1024, 1_048_576, 4352) == 4352
    assert open_files_target(1024, INFINITY, 4352) == 4352


def test_the_hard_limit_stops_the_raise() -> None:
    assert open_files_target(1024, 2048, 4352) == 2048
    assert open_files_target(1024, 1024, 4352) == 1024


def test_a_limit_already_high_enough_is_left_alone() -> None:
    assert open_files_target(65536, 1_048_576, 4352) == 65536
    assert open_files_target(INFINITY, INFINITY, 4352) == INFINITY


def test_never_lowered() -> None:
    # A hard limit below the soft one cannot be, but the target never goes down either way.
    assert open_files_target(4000, 3000, 4352) == 4000
