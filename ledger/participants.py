"""Who a token is: each participant's token, data key and sealed id, and how stored facts are shown again
(DESIGN section 7).

Stored events never hold a participant's id. When an id first appears in a tenant it gets a random token and
a data key; the events hold the token, and the key table (in the store's own database) holds the key and the
id sealed under it. A note is sealed under a key derived from the keys of everyone its fact concerns. Erasure
deletes the key row: every event stays as it was, but the id and the notes can no longer be read, and the
token shows as the tombstone `erased-<token>`.

The read side resolves tokens once per page (or once per rebuild) with `ParticipantNames`, never per fact.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

TOMBSTONE_PREFIX = "erased-"
ERASURE_SOURCE = "reciprocity"  # the source of the facts the ledger records itself; reserved
TOKEN_BYTES = 8  # 16 lowercase hex characters
KEY_BYTES = 32  # AES-256-GCM
NONCE_BYTES = 12
SEALED_NOTE = "sealed_note"  # where a fact's data holds its note, sealed


def new_token() -> str:
    """A participant's token: random, never derived from the id."""
    return secrets.token_hex(TOKEN_BYTES)


def tombstone(token: str) -> str:
    """What answers show where an erased participant was."""
    return TOMBSTONE_PREFIX + token


def id_digest(tenant: str, participant: str) -> str:
    """How the key table finds an id's row without reading any id: deleted with the row at erasure."""
    return hashlib.sha256(f"{tenant}\x00{participant}".encode()).hexdigest()


class ParticipantKey(NamedTuple):
    """A live participant's token and data key."""

    token: str
    data_key: bytes


class KeyRow(NamedTuple):
    """A row of the key table."""

    tenant: str
    token: str
    digest: str
    data_key: bytes
    sealed_id: bytes


def new_participant(tenant: str, participant: str) -> KeyRow:
    """A new participant's key row: a fresh token and key, and the id sealed under that key."""
    token, data_key = new_token(), AESGCM.generate_key(bit_length=KEY_BYTES * 8)
    return KeyRow(
        tenant, token, id_digest(tenant, participant), data_key, seal_id(tenant, token, data_key, participant)
    )


def seal_id(tenant: str, token: str, data_key: bytes, participant: str) -> bytes:
    nonce = secrets.token_bytes(NONCE_BYTES)
    return nonce + AESGCM(data_key).encrypt(nonce, participant.encode(), f"{tenant}/{token}".encode())


def open_id(tenant: str, token: str, data_key: bytes, sealed_id: bytes) -> str:
    nonce, sealed = sealed_id[:NONCE_BYTES], sealed_id[NONCE_BYTES:]
    return AESGCM(data_key).decrypt(nonce, sealed, f"{tenant}/{token}".encode()).decode()


def _note_key(data_keys: Sequence[bytes], event_id: str) -> bytes:
    # Every concerned person's key goes into the derivation: without any one of them the note is unreadable.
    # HMAC-SHA256 keyed by the (random) keys is a sound derivation for one fact's key, and a fifth of HKDF's cost.
    return hmac.digest(b"".join(data_keys), f"reciprocity-note/{event_id}".encode(), "sha256")


def seal_note(note: str, data_keys: Sequence[bytes], event_id: str) -> str:
    nonce = secrets.token_bytes(NONCE_BYTES)
    sealed = nonce + AESGCM(_note_key(data_keys, event_id)).encrypt(nonce, note.encode(), event_id.encode())
    return base64.b64encode(sealed).decode()


def open_note(sealed_note: str, data_keys: Sequence[bytes], event_id: str) -> str:
    sealed = base64.b64decode(sealed_note)
    return (
        AESGCM(_note_key(data_keys, event_id))
        .decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], event_id.encode())
        .decode()
    )


# --- The read side: tokens shown as ids (or tombstones) ----------------------------------------------------


@dataclass
class ParticipantNames:
    """What each token of a page (or a whole rebuild) shows as: the id while the key exists, else the tombstone.

    Built from the key rows of the tokens asked for (`from_rows`); a token without a row is erased."""

    names: dict[str, str]
    keys: dict[str, bytes]

    @classmethod
    def from_rows(cls, rows: Iterable[tuple[str, str, bytes, bytes]]) -> ParticipantNames:
        """From (tenant, token, data_key, sealed_id) rows: each id decrypted once."""
        names: dict[str, str] = {}
        keys: dict[str, bytes] = {}
        for tenant, token, data_key, sealed_id in rows:
            data_key = bytes(data_key)
            names[token] = open_id(tenant, token, data_key, bytes(sealed_id))
            keys[token] = data_key
        return cls(names, keys)

    def name(self, token: str) -> str:
        found = self.names.get(token)
        return tombstone(token) if found is None else found

    def erased(self, token: str) -> bool:
        return token not in self.keys

    def forget(self, token: str) -> None:
        """The participant was erased: from now on the token shows as its tombstone."""
        self.names.pop(token, None)
        self.keys.pop(token, None)

    def note(self, sealed_note: str, tokens: Sequence[str], event_id: str) -> str | None:
        """A fact's note, or None when anyone the fact concerns was erased."""
        try:
            data_keys = [self.keys[token] for token in tokens]
        except KeyError:
            return None
        return open_note(sealed_note, data_keys, event_id)


# The fields that name people, by fact type, in the order of the fact's fields ("introduced" holds a list): the
# order of a fact's tokens. The writer looks them up by name rather than test every field of every fact.
PEOPLE_FIELDS_BY_TYPE: dict[str, tuple[str, ...]] = {
    "give.recorded": ("giver", "receiver"),
    "introduction.made": ("introducer", "introduced"),
    "acknowledgement.recorded": ("acknowledger",),
}
PERSON_FIELDS = frozenset(name for names in PEOPLE_FIELDS_BY_TYPE.values() for name in names) - {"introduced"}


def revealed_data(
    data: Mapping[str, Any], tokens: Sequence[str], event_id: str, names: ParticipantNames
) -> dict[str, Any]:
    """A fact's stored data as the log shows it: ids (or tombstones) for tokens, the note opened (in its place)
    or left out. `tokens` are the tokens of everyone the fact concerns (the stored fact's `participants`)."""
    if SEALED_NOTE not in data:  # most facts: a copy with the people renamed, no loop over every field
        shown = dict(data)
        for key in PERSON_FIELDS.intersection(shown):
            shown[key] = names.name(shown[key])
        if "introduced" in shown:
            shown["introduced"] = [names.name(token) for token in shown["introduced"]]
        return shown
    shown = {}
    for key, value in data.items():
        if key in PERSON_FIELDS:
            shown[key] = names.name(value)
        elif key == "introduced":
            shown[key] = [names.name(token) for token in value]
        elif key == SEALED_NOTE:
            note = names.note(value, tokens, event_id)
            if note is not None:
                shown["note"] = note
        else:
            shown[key] = value
    return shown
