"""The tenant and app registration the fakes and the tests agree on.

Fixed, well-formed GUIDs: the proxy validates their shape, the fake Entra checks them on every
token request, and a test can name them in an expected value.
"""

from __future__ import annotations

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT_ID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
