"""Standard Webhooks signatures: HMAC-SHA256 over "{webhook-id}.{webhook-timestamp}.{body}".

See https://www.standardwebhooks.com. Several space-separated signatures may be sent (key rotation); any
one made with any currently valid secret of the source is enough. Comparison is constant-time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Mapping, Sequence

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
TOLERANCE_S = 300  # the standard's; RECIPROCITY_SIGNATURE_TOLERANCE_S may change it
SIGNATURES_MAX = 10  # a header with more is refused before any HMAC is computed


class SignatureError(Exception):
    """The request is not proven to come from the source (answered 401, the reason named)."""


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key: the base64-decoded part of a `whsec_...` secret."""
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        return base64.b64decode(encoded, validate=True)
    except binascii.Error:
        raise ValueError("a webhook secret is whsec_ followed by base64") from None


def sign(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def verify(
    keys: Sequence[bytes], headers: Mapping[str, str], body: bytes, now_s: float, tolerance_s: float = TOLERANCE_S
) -> str:
    """Checks the three headers against the body; returns the webhook-id, or raises SignatureError."""
    message_id = headers.get("webhook-id")
    timestamp_text = headers.get("webhook-timestamp")
    signature_header = headers.get("webhook-signature")
    if not message_id or not timestamp_text or not signature_header:
        raise SignatureError("webhook-id, webhook-timestamp and webhook-signature headers are required")
    try:
        timestamp = int(timestamp_text)
    except ValueError:
        raise SignatureError("webhook-timestamp must be whole seconds since the epoch") from None
    if abs(now_s - timestamp) > tolerance_s:
        raise SignatureError(
            f"webhook-timestamp is more than {tolerance_s / 60:g} minutes off; refusing a possible replay"
        )
    offered = [part.removeprefix("v1,") for part in signature_header.split(" ") if part.startswith("v1,")]
    if not offered or len(offered) > SIGNATURES_MAX:
        raise SignatureError("webhook-signature holds no v1 signature (or too many)")
    signed = f"{message_id}.{timestamp_text}.".encode() + body
    for key in keys:
        expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest())
        # Compare with every offered signature (no early exit), so timing says nothing about which matched.
        matches = [hmac.compare_digest(expected, candidate.encode()) for candidate in offered]
        if any(matches):
            return message_id
    raise SignatureError("no signature matches a current secret of this source")
