"""The emulated resource's deployments: which names exist and what each can do.

Azure answers a name it does not know with 404 ``DeploymentNotFound`` and an operation the
deployment's model cannot do with 400 ``OperationNotSupported`` (docs/azure.md, "The emulator's
error answers"). The demo holds a short list (settable with ``--deployments``); the test fake
holds none, and then any name is served as if it had been deployed for the operation asked.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal, get_args

from proxy.emulator.content import emulated_model

Kind = Literal["chat", "embeddings", "transcription", "claude"]
KINDS: tuple[Kind, ...] = get_args(Kind)
# Azure's names for the operations, as its OperationNotSupported message spells them.
OPERATION_NAMES: MappingProxyType[Kind, str] = MappingProxyType(
    {
        "chat": "chatCompletion",
        "embeddings": "embeddings",
        "transcription": "audioTranscription",
        "claude": "messages",
    }
)
# What /models/info calls each kind: Azure AI Model Inference's model_type values, which have
# none for transcription (the emulator's own word there).
MODEL_TYPES: MappingProxyType[Kind, str] = MappingProxyType(
    {
        "chat": "chat-completions",
        "embeddings": "embeddings",
        "transcription": "audio-transcription",
        "claude": "chat-completions",
    }
)
PREFIX = "emulated-"


@dataclass(frozen=True, slots=True)
class Deployment:
    name: str
    kind: Kind

    @property
    def model(self) -> str:
        """The model an answer names: the emulator's, never a real one."""
        return emulated_model(self.name)


DEFAULTS: tuple[Deployment, ...] = (
    Deployment("gpt-4o-mini", "chat"),
    Deployment("text-embedding-3-small", "embeddings"),
    Deployment("whisper", "transcription"),
    Deployment("claude-sonnet-4-5", "claude"),  # served at /anthropic/v1/messages
)


@dataclass(frozen=True, slots=True)
class Deployments:
    """A resource's deployments. ``held`` None: any name is deployed for any operation."""

    held: tuple[Deployment, ...] | None = DEFAULTS

    @property
    def listed(self) -> tuple[Deployment, ...]:
        return DEFAULTS if self.held is None else self.held

    def find(self, name: str, kind: Kind) -> Deployment | None:
        """The deployment called ``name`` (or its ``emulated-`` model name); None if none."""
        if self.held is None:
            return Deployment(name, kind)
        bare = name.removeprefix(PREFIX)
        return next((d for d in self.held if d.name in (name, bare)), None)

    def first(self, kind: Kind) -> Deployment | None:
        return next((d for d in self.listed if d.kind == kind), None)


def parse(spec: str) -> tuple[Deployment, ...]:
    """``NAME=KIND,NAME=KIND...`` (the demo's ``--deployments``); raises ValueError."""
    found: list[Deployment] = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, sep, kind = item.partition("=")
        name, kind = name.strip(), kind.strip()
        if not sep or not name or kind not in KINDS:
            raise ValueError(f"{item!r} is not NAME=KIND (KIND one of {', '.join(KINDS)})")
        if not all(c.isalnum() or c in "._-" for c in name) or len(name) > 64:
            raise ValueError(f"{name!r}: a deployment name is letters, digits, '.', '_', '-'")
        if any(d.name == name for d in found):
            raise ValueError(f"{name!r} is given twice")
        found.append(Deployment(name, next(k for k in KINDS if k == kind)))
    if not found:
        raise ValueError("name at least one deployment")
    return tuple(found)


def model_card(deployment: Deployment) -> dict[str, Any]:
    return {
        "id": deployment.model,
        "object": "model",
        "created": 1764115200,
        "owned_by": "foundry-proxy-emulator",
    }


def model_info(deployment: Deployment) -> dict[str, Any]:
    """Azure AI Model Inference's ``GET /models/info`` answer."""
    return {
        "model_name": deployment.model,
        "model_type": MODEL_TYPES[deployment.kind],
        "model_provider_name": "foundry-proxy-emulator",
    }
