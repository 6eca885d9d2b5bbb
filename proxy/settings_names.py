"""Setting names: which ones the wider Azure tooling uses, and which ones look like typos.

A misspelt name is otherwise silent: the setting it meant keeps its default, and the error
that follows ("none of AZURE_CLIENT_SECRET ... is set") does not name the line at fault. So a
name that is not one the proxy reads, but is within a few edits of one, is reported with the
name it probably meant. Names other Azure tools read (AZURE_SUBSCRIPTION_ID, AZURE_USERNAME,
MSI_ENDPOINT, ...) are never reported, even when they look like one of ours: they are somebody
else's settings, legitimately in the same environment.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Iterable

PREFIX = "FOUNDRY_PROXY_"

#: Names read by other Azure tools, that the proxy does not read: azure-identity and azure-core
#: (Python, .NET, Java, JS, Go), the Azure CLI and azd, the OpenAI SDKs' Azure clients, the
#: workload identity webhook and the App Service / Arc / Service Fabric identity platforms.
AZURE_TOOLING_NAMES = frozenset(
    {
        "AZURE_ADDITIONALLY_ALLOWED_TENANTS",
        "AZURE_CONFIG_DIR",
        "AZURE_ENV_NAME",
        "AZURE_ENVIRONMENT",
        "AZURE_EXTENSION_DIR",
        "AZURE_HTTP_USER_AGENT",
        "AZURE_LOCATION",
        "AZURE_LOG_LEVEL",
        "AZURE_PASSWORD",
        "AZURE_POD_IDENTITY_AUTHORITY_HOST",
        "AZURE_REGIONAL_AUTHORITY_NAME",
        "AZURE_RESOURCE_GROUP",
        "AZURE_SUBSCRIPTION_ID",
        "AZURE_TOKEN_CREDENTIALS",
        "AZURE_TRACING_ENABLED",
        "AZURE_USERNAME",
        "MSI_ENDPOINT",
        "MSI_SECRET",
    }
)
#: Families of names other tools own: the Azure CLI maps every configuration section to
#: AZURE_<SECTION>_<NAME>, and SDKs and samples prefix their own settings so.
AZURE_TOOLING_PREFIXES = (
    "AZURE_AI_",
    "AZURE_CORE_",
    "AZURE_DEFAULTS_",
    "AZURE_DEV_",
    "AZURE_DEVOPS_",
    "AZURE_FUNCTIONS_",
    "AZURE_HTTP_",
    "AZURE_IDENTITY_",
    "AZURE_KUBERNETES_",
    "AZURE_OPENAI_",
    "AZURE_SDK_",
    "AZD_",
    "WEBSITE_",
)
# SequenceMatcher ratio above which a name counts as a misspelling of one of ours: one or two
# edits in a name of 10-40 characters (AZURE_CLIENT_SECERT: 0.95, AZURE_FEDERATED_TOKEN_PATH:
# 0.85), while names of other tools stay below it (AZURE_SUBSCRIPTION_ID: 0.67 to
# AZURE_CLIENT_ID, AZURE_CLIENT_KEY: 0.84).
_NEAR = 0.845


def is_tooling_name(name: str) -> bool:
    """A name another Azure tool reads (never reported as a typo)."""
    name = name.upper()
    return name in AZURE_TOOLING_NAMES or name.startswith(AZURE_TOOLING_PREFIXES)


def intended(name: str, read: Collection[str]) -> str | None:
    """The name of ours ``name`` is probably a misspelling of; None when it is one of ours,
    another tool's, or like none of ours."""
    upper = name.upper()
    if upper in read or is_tooling_name(upper):
        return None
    close = difflib.get_close_matches(upper, sorted(read), n=1, cutoff=_NEAR)
    return close[0] if close else None


def env_file_problems(names: Iterable[str], read: Collection[str], where: str) -> list[str]:
    """Errors for the names of an env file: the operator wrote each line for this proxy, so a
    misspelt name stops it. Unknown names with our prefix are errors too; others are ignored
    (an env file may be shared with other tools)."""
    problems = []
    for name in names:
        upper = name.upper()
        if upper in read:
            continue
        guess = intended(upper, read)
        if guess is None and upper.startswith(PREFIX):
            close = difflib.get_close_matches(upper, sorted(read), n=1)
            guess = close[0] if close else None
        elif guess is None:
            continue
        hint = f" (did you mean {guess}?)" if guess else ""
        problems.append(f"{name}: unknown setting in {where}{hint}")
    return problems


def environment_warnings(names: Iterable[str], read: Collection[str]) -> list[str]:
    """Warnings for the names of the process environment, which carries every other program's
    variables too: only near-misses of our names are reported, and only as warnings."""
    out = []
    for name in sorted(names):
        guess = intended(name, read)
        if guess is not None:
            out.append(
                f"{name} is set in the environment but is not a setting foundry-proxy reads: "
                f"did you mean {guess}?"
            )
    return out
