"""A local emulator of Entra ID's token endpoint and the Foundry / Azure OpenAI data plane.

Used by `foundry-proxy demo` (a working proxy with no Azure account) and by the project's tests.
Never used unless asked for; everything it serves says "emulated".
"""
