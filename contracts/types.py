"""Constrained scalar types shared by every contract: the words of DESIGN section 1."""

import re
import unicodedata
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BeforeValidator,
    Field,
    PlainSerializer,
    StringConstraints,
    TypeAdapter,
    ValidationError,
)
from pydantic_core import PydanticCustomError

SLUG_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
PARTICIPANT_PATTERN = r"^[A-Za-z0-9_-]{1,128}$"
# A fact's event_id in a path (GET .../events/{event_id}): a UUID in its usual hyphenated form.
UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
EXTERNAL_ID_PATTERN = r"^[\x20-\x7e]{1,256}$"

VALUE_MAX = Decimal(1_000_000)
VALUE_DECIMAL_PLACES_MAX = 6
NOTE_CHARS_MAX = 2_000
CONTEXT_CHARS_MAX = 100

# An erased participant shows as `erased-<token>` (ledger/participants.py, DESIGN section 7); no sender may
# name one, or a fact could pass itself off as the erased person's.
RESERVED_PARTICIPANT_PREFIX = "erased-"
NEW_PARTICIPANT_PATTERN = rf"^(?!{RESERVED_PARTICIPANT_PREFIX})[A-Za-z0-9_-]{{1,128}}$"

Slug = Annotated[str, StringConstraints(pattern=SLUG_PATTERN)]
# Where the read API takes a participant: any id, a tombstone included (a counterpart may be erased).
ParticipantId = Annotated[str, StringConstraints(pattern=PARTICIPANT_PATTERN)]
ExternalId = Annotated[str, StringConstraints(pattern=EXTERNAL_ID_PATTERN)]
EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)  # no fact of this ledger is older; bounds date arithmetic
# Line breaks and tabs are text in a note; every other control character (NUL above all: PostgreSQL's text
# cannot hold it) and lone surrogates (not encodable) are refused in every text field.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")  # Unicode's Cc and Cs, in one C scan
_NOTE_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")  # less tab, LF, CR


def _refuse(pattern: re.Pattern[str], text: str) -> str:
    found = pattern.search(text)
    if found:
        raise PydanticCustomError(
            "control_character", "must not hold control characters (found {char})", {"char": f"U+{ord(found[0]):04X}"}
        )
    return text


def _note_text(text: str) -> str:
    return _refuse(_NOTE_CONTROL, text)


def _not_reserved(participant: str) -> str:
    if participant.startswith(RESERVED_PARTICIPANT_PREFIX):
        raise PydanticCustomError(
            "participant_not_reserved",
            "must not begin with {prefix}: such ids name erased participants",
            {"prefix": RESERVED_PARTICIPANT_PREFIX},
        )
    return participant


# Where a fact names a participant (webhooks): an id that is not a tombstone. The pattern (with its
# look-ahead) is what the published schemas say; the validator names the rule.
NewParticipantId = Annotated[
    str,
    StringConstraints(pattern=PARTICIPANT_PATTERN),
    AfterValidator(_not_reserved),
    Field(
        json_schema_extra={"pattern": NEW_PARTICIPANT_PATTERN},
        description=f"A participant id; ids beginning with `{RESERVED_PARTICIPANT_PREFIX}` are reserved (422).",
    ),
]


# The same rules as JSON Schema patterns, so the published schemas state what the validators enforce.
NO_CONTROL_PATTERN = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$"
NOTE_PATTERN = "^[^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f-\\u009f]*$"
_TEXT_CHAR = "[^\\u0000-\\u001f\\u007f-\\u009f]"
CONTEXT_PATTERN = f"^{_TEXT_CHAR}*[^\\s\\u0000-\\u001f\\u007f-\\u009f]{_TEXT_CHAR}*$"  # one visible character at least
VALUE_TEXT_PATTERN = "^[0-9]+(\\.[0-9]{1,6})?$"
YEAR_1900_ON_PATTERN = "^(19|[2-9][0-9])[0-9]{2}-"

Note = Annotated[
    str,
    StringConstraints(max_length=NOTE_CHARS_MAX),
    AfterValidator(_note_text),
    Field(json_schema_extra={"pattern": NOTE_PATTERN}),
]


def decimal_text(value: Decimal) -> str:
    """A decimal as the canonical JSON string we answer with: no exponent, no trailing zeros."""
    return format(value.normalize(), "f")


def utc_text(moment: datetime) -> str:
    """Timestamps as we store and answer them: UTC, microseconds, 'Z' (so they sort as text)."""
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


_DECIMAL_TEXT = re.compile(r"[0-9]+(\.[0-9]+)?")  # places past 6 are left to the decimal_places rule


def _exact_decimal(value: object) -> object:
    """Whole numbers and decimal strings become exact Decimals (the edge parses JSON fractions as Decimal);
    anything else goes on to the Decimal check, which refuses it by name."""
    if isinstance(value, int) and not isinstance(value, bool):
        return Decimal(value)
    if isinstance(value, str):
        if not _DECIMAL_TEXT.fullmatch(value):
            raise PydanticCustomError("decimal_parsing", "Input should be a valid decimal")
        return Decimal(value)
    if not isinstance(value, Decimal):  # a bool, or a float, which lost digits before it got here
        raise PydanticCustomError("decimal_type", "Input should be a decimal: a JSON number or a string")
    return value


Value = Annotated[
    Decimal,
    Field(gt=0, le=VALUE_MAX, decimal_places=VALUE_DECIMAL_PLACES_MAX, description="A decimal > 0."),
    BeforeValidator(_exact_decimal),
    PlainSerializer(decimal_text, return_type=str, when_used="json"),
    Field(json_schema_extra={"pattern": VALUE_TEXT_PATTERN}),  # applies to the string form only
]


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text.strip())


def _context_text(text: str) -> str:
    # Trim and normalise before the length check, so " x " and "x" are the same context value.
    text = _nfc(_refuse(_CONTROL, text))
    if not 1 <= len(text) <= CONTEXT_CHARS_MAX:
        raise PydanticCustomError(
            "context_length", "must be 1 to {max} characters after trimming", {"max": CONTEXT_CHARS_MAX}
        )
    return text


ContextText = Annotated[
    str,
    AfterValidator(_context_text),
    Field(json_schema_extra={"pattern": CONTEXT_PATTERN, "minLength": 1}),
]

# A context filter of the read API: compared like a context value, so it holds no control character either.
ContextFilter = Annotated[
    str, StringConstraints(min_length=1, max_length=CONTEXT_CHARS_MAX, pattern=NO_CONTROL_PATTERN)
]

_LAX_DATETIME: TypeAdapter[datetime] = TypeAdapter(AwareDatetime)


def _datetime_text(value: object) -> object:
    """ISO 8601 text becomes a datetime (JSON has no datetime type); a datetime passes as it is."""
    if not isinstance(value, str):
        return value
    try:
        return _LAX_DATETIME.validate_python(value)
    except ValidationError as invalid:
        first = invalid.errors(include_url=False)[0]
        raise PydanticCustomError(first["type"], first["msg"]) from None


def _in_range(moment: datetime) -> datetime:
    """From 1900 on, and convertible to UTC: year 9999 at -14:00 is year 10000 in UTC, past datetime's end."""
    try:
        in_utc = moment.astimezone(UTC)
    except OverflowError:
        in_utc = None
    if in_utc is None or in_utc < EARLIEST:
        raise PydanticCustomError("datetime_range", "must be between 1900-01-01T00:00:00Z and 9999-12-31T23:59:59Z")
    return moment


FUTURE_MAX = timedelta(minutes=5)  # a fact may say it happened this far ahead of our clock, no further


def _not_ahead(moment: datetime) -> datetime:
    if moment > datetime.now(UTC) + FUTURE_MAX:
        raise PydanticCustomError("datetime_future", "must be at most 5 minutes ahead of now")
    return moment


_DATE_TIME_TEXT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}")


def _date_time_text(value: object) -> object:
    """A query's moment is RFC 3339 text: pydantic alone would also read `0.5` as seconds since the epoch."""
    if isinstance(value, str) and not _DATE_TIME_TEXT.match(value):
        raise PydanticCustomError("datetime_parsing", "must be an RFC 3339 date-time with an offset")
    return _datetime_text(value)  # parsed here: a strict model (a NATS request) takes no text after this


# A moment in the ledger's time: from 1900 to 5 minutes ahead (an `as_of` asks about such a moment).
Moment = Annotated[
    AwareDatetime, BeforeValidator(_date_time_text), AfterValidator(_in_range), AfterValidator(_not_ahead)
]

# A bound of a time window: any moment from 1900 on (a window may reach into the future).
WindowBound = Annotated[AwareDatetime, BeforeValidator(_date_time_text), AfterValidator(_in_range)]

Timestamp = Annotated[
    AwareDatetime,
    BeforeValidator(_datetime_text),
    AfterValidator(_in_range),
    PlainSerializer(utc_text, return_type=str, when_used="json"),
    Field(json_schema_extra={"pattern": YEAR_1900_ON_PATTERN}),
]


def context_key(text: str) -> str:
    """The form in which context values are compared: trimmed, NFC-normalised and casefolded."""
    return unicodedata.normalize("NFC", _nfc(text).casefold())
