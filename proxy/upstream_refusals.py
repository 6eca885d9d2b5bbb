"""What an upstream 401 means, from its body: shared by the forwarder (replay with a fresh
token?) and `check` (which advice to give). Standard library only.

A rejected token (expired, revoked, wrong audience or tenant) comes as ``{"statusCode": 401,
"message": ...}`` or with a ``WWW-Authenticate`` challenge (continuous access evaluation), and
a new token may help. A token without a data-plane role comes as ``{"error": {"code":
"PermissionDenied"}}``: no new token helps, a role assignment does (docs/azure.md).
"""

# TOKEN_REJECTED is a verdict, not a credential; ruff S105 takes it for a password.
# ruff: noqa: S105

from __future__ import annotations

from enum import Enum


class Refusal(Enum):
    TOKEN_REJECTED = "token_rejected"
    NO_ROLE = "no_role"
    #: A 401 in no shape we know (a gateway's, a captive portal's).
    UNEXPLAINED = "unexplained"


def classify_401(body: object, *, challenge: bool) -> Refusal:
    """``body``: the parsed JSON body (anything else when it was not JSON); ``challenge``:
    whether the answer carried ``WWW-Authenticate``."""
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            if error.get("code") == "PermissionDenied":
                return Refusal.NO_ROLE
            # Anthropic's shape for a rejected credential, should the Claude route answer in
            # it rather than in the Entra-token shape (docs/claude.md).
            if error.get("type") == "authentication_error":
                return Refusal.TOKEN_REJECTED
        if "statusCode" in body and "message" in body:
            return Refusal.TOKEN_REJECTED
    return Refusal.TOKEN_REJECTED if challenge else Refusal.UNEXPLAINED
