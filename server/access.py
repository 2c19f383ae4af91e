"""Client keys: which namespaces a caller may read and write.

Off by default (no key needed). With `client_keys` set, every /v1 request carries its key in
`x-semcache-key` (not `Authorization`, which /v1/messages forwards to Anthropic), and a key
bound to namespace A gets 403 on namespace B whatever else the request says.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping, Sequence
from typing import Any

from litestar import Request

from cache import Forbidden, Unauthorized

HEADER = "x-semcache-key"
ALL = "*"
_CHALLENGE = f'Key realm="semcache", header="{HEADER}"'


class ClientKeys:
    """The configured keys, each with the namespaces it covers ("*": all of them)."""

    def __init__(self, keys: Mapping[str, Sequence[str]]) -> None:
        self._keys = [(key.encode(), frozenset(spaces)) for key, spaces in keys.items()]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def covered(self, given: str | None) -> frozenset[str] | None:
        """The namespaces `given` may use; None means all. Raises Unauthorized for a missing
        or unknown key when keys are configured."""
        if not self._keys:
            return None
        if not given:
            raise Unauthorized(f"this server needs a client key in the {HEADER} header", _CHALLENGE)
        found: frozenset[str] | None = None
        candidate = given.encode()
        for key, spaces in self._keys:  # every key compared, in constant time each
            if hmac.compare_digest(candidate, key):
                found = spaces
        if found is None:
            raise Unauthorized(f"unknown client key in the {HEADER} header", _CHALLENGE)
        return None if ALL in found else found


class Access:
    """What one request's key allows; handlers ask before they read or write."""

    def __init__(self, keys: ClientKeys, given: str | None) -> None:
        self._allowed = keys.covered(given)

    def check(self, namespace: str) -> None:
        if self._allowed is not None and namespace not in self._allowed:
            raise Forbidden(f"this client key does not cover namespace {namespace!r}")

    def check_all(self) -> None:
        """For reports across namespaces (stats, usage): a key for every namespace."""
        if self._allowed is not None:
            raise Forbidden('cross-namespace reports need a client key for "*"')


def access_of(request: Request[Any, Any, Any]) -> Access:
    """What the caller's client key allows. A plain call, not a dependency: a handler with two
    dependencies makes Litestar resolve them in a task group, which took 13% of the event loop's
    samples on exact hits (benchmarks/results/profile-exact-hit.txt)."""
    keys: ClientKeys = request.app.state.client_keys
    return Access(keys, request.headers.get(HEADER))
