"""Azure's answers to a mistake on the OpenAI routes, in its status, code and body shape.

Each shape, and the public page it comes from, is listed in docs/azure.md ("The emulator's
error answers"). The messages are Azure's own words, since apps and SDKs match on them.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from proxy.emulator.deployments import OPERATION_NAMES, Kind
from proxy.emulator.wire import Headers, Reply, json_reply

DEPLOYMENT_NOT_FOUND = (
    "The API deployment for this resource does not exist. If you created the deployment "
    "within the last 5 minutes, please wait a moment and try again."
)
_UNPARSEABLE = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
    "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
    "sent was not valid JSON.)"
)
_FILTERED_PROMPT = (
    "The response was filtered due to the prompt triggering Azure OpenAI's content management "
    "policy. Please modify your prompt and retry. To learn more about our content filtering "
    "policies please read our documentation: https://go.microsoft.com/fwlink/?linkid=2198766"
)
_OPERATIONS = MappingProxyType(
    {"chat": "ChatCompletions_Create", "embeddings": "Embeddings_Create"}
)


def resource_not_found() -> Reply:
    """An unknown path, or a dated route without ``api-version``."""
    return json_reply(404, {"error": {"code": "404", "message": "Resource not found"}})


def api_version_not_supported() -> Reply:
    return json_reply(
        400, {"error": {"code": "BadRequest", "message": "API version not supported"}}
    )


def deployment_not_found(v1: bool) -> Reply:
    """``v1``: the /openai/v1 routes, whose errors also carry OpenAI's ``type``."""
    error: dict[str, Any] = {"code": "DeploymentNotFound", "message": DEPLOYMENT_NOT_FOUND}
    if v1:
        error = {"type": "invalid_request_error", **error}
    return json_reply(404, {"error": error})


def operation_not_supported(kind: Kind, model: str) -> Reply:
    message = (
        f"The {OPERATION_NAMES[kind]} operation does not work with the specified model, "
        f"{model}. Please choose different model and try again. You can learn more about "
        "which models can be used with each operation here: "
        "https://go.microsoft.com/fwlink/?linkid=2197993."
    )
    return json_reply(400, {"error": {"code": "OperationNotSupported", "message": message}})


def _invalid_request(message: str, param: str | None = None, code: str | None = None) -> Reply:
    error = {"message": message, "type": "invalid_request_error", "param": param, "code": code}
    return json_reply(400, {"error": error})


def unparseable_body() -> Reply:
    """Malformed JSON, a body that is not JSON at all, or JSON that is not an object."""
    return _invalid_request(_UNPARSEABLE)


def missing_field(name: str) -> Reply:
    return _invalid_request(f"'{name}' is a required property")


def invalid_field(name: str, message: str) -> Reply:
    return _invalid_request(message, param=name)


def content_filtered(results: dict[str, Any]) -> Reply:
    """The prompt tripped the content filter: 400 ``content_filter``, the verdict inside."""
    error = {
        "message": _FILTERED_PROMPT,
        "type": None,
        "param": "prompt",
        "code": "content_filter",
        "status": 400,
        "innererror": {"code": "ResponsibleAIPolicyViolation", "content_filter_result": results},
    }
    return json_reply(400, {"error": error})


def rate_limited(kind: Kind | None, api_version: str, retry_after: float) -> Reply:
    seconds = max(1, round(retry_after))
    operation = _OPERATIONS.get(kind or "chat", "ChatCompletions_Create")
    message = (
        f"Requests to the {operation} Operation under Azure OpenAI API version {api_version} "
        "have exceeded token rate limit of your current AIServices S0 pricing tier. Please "
        f"retry after {seconds} seconds. Please contact Azure support service if you would "
        "like to further increase the default rate limit."
    )
    return json_reply(429, {"error": {"code": "429", "message": message}}, throttled(retry_after))


def throttled(retry_after: float) -> Headers:
    """The headers of a 429: when to come back, and nothing left in this minute's budget."""
    return [
        (b"retry-after", str(max(1, round(retry_after))).encode()),
        (b"retry-after-ms", str(round(retry_after * 1000)).encode()),
        (b"x-ratelimit-remaining-requests", b"0"),
        (b"x-ratelimit-remaining-tokens", b"0"),
    ]


def server_error() -> Reply:
    return json_reply(
        500,
        {
            "error": {
                "code": "InternalServerError",
                "message": "The server had an error while processing your request. (emulated)",
            }
        },
    )
