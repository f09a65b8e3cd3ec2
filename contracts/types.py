"""Constrained scalar types shared by every contract: the words of DESIGN section 1."""

import unicodedata
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated

from pydantic import AfterValidator, AwareDatetime, Field, PlainSerializer, StringConstraints
from pydantic_core import PydanticCustomError

SLUG_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
PARTICIPANT_PATTERN = r"^[A-Za-z0-9_-]{1,128}$"
EXTERNAL_ID_PATTERN = r"^[\x20-\x7e]{1,256}$"

VALUE_MAX = Decimal(1_000_000)
VALUE_DECIMAL_PLACES_MAX = 6
NOTE_CHARS_MAX = 2_000
CONTEXT_CHARS_MAX = 100

Slug = Annotated[str, StringConstraints(pattern=SLUG_PATTERN)]
ParticipantId = Annotated[str, StringConstraints(pattern=PARTICIPANT_PATTERN)]
ExternalId = Annotated[str, StringConstraints(pattern=EXTERNAL_ID_PATTERN)]
Note = Annotated[str, StringConstraints(max_length=NOTE_CHARS_MAX)]


def decimal_text(value: Decimal) -> str:
    """A decimal as the canonical JSON string we answer with: no exponent, no trailing zeros."""
    return format(value.normalize(), "f")


def utc_text(moment: datetime) -> str:
    """Timestamps as we store and answer them: UTC, microseconds, 'Z' (so they sort as text)."""
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


Value = Annotated[
    Decimal,
    Field(gt=0, le=VALUE_MAX, decimal_places=VALUE_DECIMAL_PLACES_MAX, description="A decimal > 0."),
    PlainSerializer(decimal_text, return_type=str, when_used="json"),
]


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text.strip())


def _context_text(text: str) -> str:
    # Trim and normalise before the length check, so " x " and "x" are the same context value.
    text = _nfc(text)
    if not 1 <= len(text) <= CONTEXT_CHARS_MAX:
        raise PydanticCustomError(
            "context_length", "must be 1 to {max} characters after trimming", {"max": CONTEXT_CHARS_MAX}
        )
    return text


ContextText = Annotated[str, AfterValidator(_context_text)]

Timestamp = Annotated[AwareDatetime, PlainSerializer(utc_text, return_type=str, when_used="json")]


def context_key(text: str) -> str:
    """The form in which context values are compared: trimmed, NFC-normalised and casefolded."""
    return unicodedata.normalize("NFC", _nfc(text).casefold())
