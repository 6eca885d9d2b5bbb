"""What changes together between Azure clouds: login host, token scopes, upstream host names.

Shared by the settings (defaults, the "is this a usual host" warning) and by `check` (the
audiences a data-plane token may carry), so that both hold the same list (docs/azure.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal
from urllib.parse import urlsplit

COGNITIVE_SERVICES_SCOPE = "https://cognitiveservices.azure.com/.default"
AI_PROJECTS_SCOPE = "https://ai.azure.com/.default"
PUBLIC_AUTHORITY = "https://login.microsoftonline.com"

CloudName = Literal["public", "usgov", "china"]


@dataclass(frozen=True, slots=True)
class Cloud:
    authority_host: str
    scope: str
    projects_scope: str
    #: Host suffixes of Azure OpenAI / Foundry endpoints in this cloud (a hint, not a rule:
    #: private endpoints and custom domains differ).
    upstream_suffixes: tuple[str, ...]


# The US Gov and China scopes follow the public cloud's pattern with the cloud's DNS suffix;
# Microsoft documents the US Gov Azure OpenAI host (azure-ai-docs azure-government.md) but not
# every scope, so each stays overridable (FOUNDRY_PROXY_SCOPE, FOUNDRY_PROXY_PROJECTS_SCOPE).
CLOUDS: MappingProxyType[str, Cloud] = MappingProxyType(
    {
        "public": Cloud(
            PUBLIC_AUTHORITY,
            COGNITIVE_SERVICES_SCOPE,
            AI_PROJECTS_SCOPE,
            (
                ".openai.azure.com",
                ".services.ai.azure.com",
                ".cognitiveservices.azure.com",
                ".inference.ml.azure.com",
            ),
        ),
        "usgov": Cloud(
            "https://login.microsoftonline.us",
            "https://cognitiveservices.azure.us/.default",
            "https://ai.azure.us/.default",
            (".openai.azure.us", ".services.ai.azure.us", ".cognitiveservices.azure.us"),
        ),
        "china": Cloud(
            "https://login.chinacloudapi.cn",
            "https://cognitiveservices.azure.cn/.default",
            "https://ai.azure.cn/.default",
            (".openai.azure.cn", ".services.ai.azure.cn", ".cognitiveservices.azure.cn"),
        ),
    }
)


def _resource(scope: str) -> str:
    parts = urlsplit(scope)
    return f"{parts.scheme}://{parts.netloc}"


#: Token audiences the Foundry / Azure OpenAI data plane accepts: the resource of each cloud's
#: two scopes (public first, so messages can name the usual pair).
DATA_PLANE_AUDIENCES: tuple[str, ...] = tuple(
    _resource(scope) for cloud in CLOUDS.values() for scope in (cloud.scope, cloud.projects_scope)
)


def cloud_of_host(host: str) -> str | None:
    """The cloud whose usual upstream host names end like ``host``; None for any other host
    (a private endpoint, a custom domain, a typo)."""
    host = host.lower().rstrip(".")
    for name, cloud in CLOUDS.items():
        if host.endswith(cloud.upstream_suffixes):
            return name
    return None
