"""The platform's signing key: authority flows from it. It signs every round plan (with the
consent grant inside), and peers pin its public key at hello, so a plan that did not come from
the platform (one a hostile node wrote into a victim's inbox) is refused."""

from functools import cache

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from peers.wire.signing import NodeKey


@cache
def platform_key() -> NodeKey:
    try:
        return NodeKey.from_bytes(bytes.fromhex(settings.PLATFORM_SIGNING_KEY))
    except ValueError as exc:
        raise ImproperlyConfigured(f"PLATFORM_SIGNING_KEY must be 64 hex characters: {exc}") from None
