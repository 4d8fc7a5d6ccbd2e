"""The scopes fedhpc asks Globus Auth for, grouped by the resource server whose token carries them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from globus_sdk.scopes import AuthScopes, ComputeScopes, GCSCollectionScopes, Scope, TransferScopes

AUTH = AuthScopes.resource_server
TRANSFER = TransferScopes.resource_server
COMPUTE = ComputeScopes.resource_server  # "funcx_service": Compute names its resource server, not its URL

IDENTITY_SCOPES = (AuthScopes.openid, AuthScopes.profile, AuthScopes.email)
"""openid ties every token to one identity (globus-sdk refuses a login without it); profile, email name it in whoami."""


def transfer_scope(data_access_collections: Iterable[str] = ()) -> Scope:
    """Transfer's scope with a data_access dependency per collection.

    A Globus Connect Server v5 *mapped* collection refuses every Transfer
    operation (ls, mkdir, a transfer) until the user has consented to its
    data_access scope under Transfer's; guest collections and Globus Connect
    Personal have no such scope, and asking for one fails the login with
    "Unknown Scope". Marked optional, as globus-sdk's own
    ``TransferClient.add_app_data_access_scope`` does.
    """
    dependencies = [GCSCollectionScopes(c).data_access.with_optional(True) for c in unique(data_access_collections)]
    return TransferScopes.all.with_dependencies(dependencies) if dependencies else TransferScopes.all


def login_requirements(data_access_collections: Sequence[str] = ()) -> dict[str, list[Scope]]:
    """Everything ``fedhpc login`` asks for at once, so a run never needs a second consent."""
    return {
        AUTH: list(IDENTITY_SCOPES),
        TRANSFER: [transfer_scope(data_access_collections)],
        COMPUTE: [ComputeScopes.all],
    }


def unique(values: Iterable[str]) -> list[str]:
    """`values` as strings, first occurrence kept, order kept."""
    return list(dict.fromkeys(str(v) for v in values))


def data_access_collection(scope_string: str) -> str | None:
    """The collection id of a ``https://auth.globus.org/scopes/<id>/data_access`` scope, else None."""
    prefix, suffix = "https://auth.globus.org/scopes/", "/data_access"
    if scope_string.startswith(prefix) and scope_string.endswith(suffix):
        return scope_string[len(prefix) : -len(suffix)]
    return None
