"""foundry-proxy: a local authenticating reverse proxy for Azure AI Foundry and Azure OpenAI."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("foundry-proxy")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
