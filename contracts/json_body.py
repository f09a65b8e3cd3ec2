"""Request bodies as JSON, read exactly: decimals stay decimals and a key may appear once per object.

pydantic's JSON mode reads numbers as binary floats (0.99999999999999999 became 1) and lets a repeated key
win, so a body another parser reads differently could be signed and recorded. The standard library's
decoder with hooks reads what was sent, and refuses what two parsers could disagree on.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from json.decoder import WHITESPACE, scanstring
from typing import Any

# A lone surrogate can only come from a \\uD800-\\uDFFF escape: valid UTF-8 cannot hold one.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class JsonBodyError(ValueError):
    """The body is not JSON we can read one way only (answered 400, the reason named)."""


class TooManyItems(Exception):
    """A list has more items than allowed; raised as soon as the first one over is read."""

    def __init__(self, field: str, limit: int) -> None:
        super().__init__(f"{field}: at most {limit} items")
        self.field = field
        self.limit = limit


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise JsonBodyError(f"the key {key!r} appears more than once in one object")
            seen.add(key)
    return obj


def _no_constant(name: str) -> Any:
    raise JsonBodyError(f"{name} is not a JSON number")


_decoder = json.JSONDecoder(object_pairs_hook=_unique_keys, parse_float=Decimal, parse_constant=_no_constant)


def parse(body: bytes) -> Any:
    """The body's one JSON value, with exact decimals; JsonBodyError says what is wrong with it."""
    text = _text(body)
    try:
        value = _decoder.decode(text)
    except JsonBodyError:
        raise
    except RecursionError:
        raise JsonBodyError("nested too deeply") from None
    except ValueError as bad:  # JSONDecodeError, or an integer of thousands of digits
        raise JsonBodyError(str(bad)) from None
    _check_surrogates(text, value)
    return value


def parse_object_with_list(body: bytes, field: str, items_max: int) -> dict[str, Any]:
    """A JSON object whose `field` is a list of at most `items_max` items. Reading stops at the first item
    over the limit (TooManyItems), so a body of millions of tiny items costs no more than the limit."""
    text = _text(body)
    try:
        obj = _object_with_list(text, field, items_max)
    except (JsonBodyError, TooManyItems):
        raise
    except RecursionError:
        raise JsonBodyError("nested too deeply") from None
    except StopIteration as stop:
        raise JsonBodyError(f"Expecting value: char {stop.value}") from None
    except ValueError as bad:
        raise JsonBodyError(str(bad)) from None
    _check_surrogates(text, obj)
    return obj


def _text(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as bad:
        raise JsonBodyError(f"not UTF-8 at byte {bad.start}") from None


def _skip(text: str, at: int) -> int:
    return WHITESPACE.match(text, at).end()  # type: ignore[union-attr]


def _expect(text: str, at: int, char: str) -> int:
    if text[at : at + 1] != char:
        raise json.JSONDecodeError(f"Expecting {char!r}", text, at)
    return at + 1


def _object_with_list(text: str, field: str, items_max: int) -> dict[str, Any]:
    scan = _decoder.scan_once
    at = _expect(text, _skip(text, 0), "{")
    pairs: list[tuple[str, Any]] = []
    at = _skip(text, at)
    if text[at : at + 1] == "}":
        at += 1
    else:
        while True:
            key, at = scanstring(text, _expect(text, at, '"'))
            at = _skip(text, _expect(text, _skip(text, at), ":"))
            if key == field and text[at : at + 1] == "[":
                value, at = _list(text, at, field, items_max)
            else:
                value, at = scan(text, at)
            pairs.append((key, value))
            at = _skip(text, at)
            if text[at : at + 1] == "}":
                at += 1
                break
            at = _skip(text, _expect(text, at, ","))
    if _skip(text, at) != len(text):
        raise json.JSONDecodeError("Extra data", text, at)
    return _unique_keys(pairs)


def _list(text: str, at: int, field: str, items_max: int) -> tuple[list[Any], int]:
    scan = _decoder.scan_once
    items: list[Any] = []
    at = _skip(text, at + 1)
    if text[at : at + 1] == "]":
        return items, at + 1
    while True:
        if len(items) == items_max:
            raise TooManyItems(field, items_max)
        item, at = scan(text, at)
        items.append(item)
        at = _skip(text, at)
        if text[at : at + 1] == "]":
            return items, at + 1
        at = _skip(text, _expect(text, at, ","))


def _check_surrogates(text: str, value: Any) -> None:
    try:
        lone = _SURROGATE_ESCAPE.search(text) is not None and _has_lone_surrogate(value)
    except RecursionError:
        lone = True  # nested too deeply to look through; refusing is safe
    if lone:
        raise JsonBodyError("a string holds a lone UTF-16 surrogate (\\uD800-\\uDFFF), which is not text")


def _has_lone_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_lone_surrogate(v) for v in value)
    return False
