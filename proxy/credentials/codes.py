"""The proxy's own codes for a failed token request (``CredentialError.code``).

A ``CredentialError`` carries one of these, or the token service's own code: Entra's
``AADSTSnnnn`` (explained by entra_errors.HINTS) or an OAuth ``error`` string. Three codes carry
the HTTP status of an answer that said nothing more: ``http_<status>`` (the token endpoint),
``imds_http_<status>`` and ``identity_endpoint_http_<status>``. The codes appear in /readyz,
the 503 bodies, the metrics and `check`, which picks its advice by them (check.py).
"""

# The TOKEN_* members are error codes, not credentials; ruff S105 takes them for passwords.
# ruff: noqa: S105

from __future__ import annotations

from enum import StrEnum


class TokenErrorCode(StrEnum):
    # The token endpoint (Entra) could not be asked, or its answer was unusable.
    TOKEN_TIMEOUT = "token_timeout"
    TOKEN_DNS_ERROR = "token_dns_error"
    TOKEN_TLS_ERROR = "token_tls_error"
    TOKEN_UNREACHABLE = "token_unreachable"
    TOKEN_HTTP = "http"  # with the status: http_302, http_502
    MALFORMED_TOKEN_RESPONSE = "malformed_token_response"
    # A secret file or federated token file.
    CREDENTIAL_FILE_UNREADABLE = "credential_file_unreadable"
    CREDENTIAL_FILE_EMPTY = "credential_file_empty"
    # Managed identity: App Service / Container Apps endpoint, and IMDS.
    IDENTITY_ENDPOINT_UNREACHABLE = "identity_endpoint_unreachable"
    IDENTITY_ENDPOINT_UNAVAILABLE = "identity_endpoint_unavailable"
    IDENTITY_ENDPOINT_HTTP = "identity_endpoint_http"  # with the status
    IDENTITY_HEADER_REJECTED = "identity_header_rejected"
    IDENTITY_NOT_ASSIGNED = "identity_not_assigned"
    IMDS_UNREACHABLE = "imds_unreachable"
    IMDS_UNAVAILABLE = "imds_unavailable"
    IMDS_HTTP = "imds_http"  # with the status
    # The Azure CLI and the Azure Developer CLI.
    CLI_BAD_ARGUMENT = "cli_bad_argument"
    CLI_NOT_INSTALLED = "cli_not_installed"
    CLI_NOT_LOGGED_IN = "cli_not_logged_in"
    CLI_FAILED = "cli_failed"
    CLI_TIMEOUT = "cli_timeout"
    # azure-identity's DefaultAzureCredential.
    AZURE_IDENTITY_FAILED = "azure_identity_failed"
    AZURE_IDENTITY_UNAVAILABLE = "azure_identity_unavailable"
    # The token provider itself (provider.py).
    TOKEN_PENDING = "token_pending"
    TOKEN_INTERNAL_ERROR = "token_internal_error"

    def with_status(self, status: int) -> str:
        """``http_502``: one of the codes that carry an HTTP status."""
        return f"{self.value}_{status}"


_WITH_STATUS = (
    TokenErrorCode.IDENTITY_ENDPOINT_HTTP,
    TokenErrorCode.IMDS_HTTP,
    TokenErrorCode.TOKEN_HTTP,
)


def parse_code(code: str) -> tuple[TokenErrorCode | None, int | None]:
    """``"imds_http_500"`` -> (IMDS_HTTP, 500); ``"token_timeout"`` -> (TOKEN_TIMEOUT, None);
    a code of the token service's own (``AADSTS7000215``, ``invalid_client``) -> (None, None).
    """
    try:
        return TokenErrorCode(code), None
    except ValueError:
        pass
    for family in _WITH_STATUS:
        prefix, _, status = code.rpartition("_")
        if prefix == family.value and status.isdigit():
            return family, int(status)
    return None, None
