"""RFC 9457 problems: every refusal names what was wrong, where, and whether a retry can help."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from contracts.answers import Problem, ProblemError
from contracts.webhook_bodies import WEBHOOK_FACT_TYPES

PROBLEM_TYPE_BASE = "/problems/"


class ProblemException(Exception):
    """Raised at the edge to answer with a problem; carries the answer, never a secret."""

    def __init__(self, problem: Problem, headers: dict[str, str] | None = None) -> None:
        super().__init__(problem.detail)
        self.problem = problem
        self.headers = headers or {}


def problem(
    status: int,
    name: str,
    title: str,
    detail: str,
    *,
    errors: list[ProblemError] | None = None,
    retryable: bool | None = None,
) -> Problem:
    return Problem(
        type=PROBLEM_TYPE_BASE + name,
        title=title,
        status=status,
        detail=detail,
        errors=errors,
        retryable=retryable,
    )


def invalid(errors: list[ProblemError], detail: str | None = None) -> Problem:
    return problem(
        422,
        "invalid",
        "The request breaks a rule",
        detail or "; ".join(f"{e.path}: {e.message}" for e in errors),
        errors=errors,
        retryable=False,
    )


def rule_broken(path: str, rule: str, message: str) -> Problem:
    return invalid([ProblemError(path=path, rule=rule, message=message)])


def unknown_reference(path: str, message: str) -> Problem:
    return problem(
        409,
        "unknown-reference",
        "The referenced fact is not recorded (yet)",
        message,
        errors=[ProblemError(path=path, rule="ref_recorded", message=message)],
        retryable=True,
    )


def identity_conflict(event_id: str) -> Problem:
    return problem(
        409,
        "identity-conflict",
        "This id was already used for another fact",
        f"a fact with this id is recorded (event {event_id}) with other content; external ids are unique "
        "per source and facts never change (send a reversal to undo one)",
        errors=[ProblemError(path="data.id", rule="same_id_same_fact", message="already used for another fact")],
        retryable=False,
    )


def store_unavailable(detail: str) -> Problem:
    return problem(503, "store-unavailable", "The store cannot commit right now", detail, retryable=True)


def views_catching_up(detail: str) -> Problem:
    return problem(503, "views-catching-up", "The views are too far behind the log to take more facts now", detail,
                   retryable=True)  # fmt: skip


def malformed_json(detail: str) -> Problem:
    return problem(400, "malformed-json", "The body is not valid JSON", detail, retryable=False)


def json_path(loc: tuple[Any, ...], prefix: str = "") -> str:
    """A pydantic error location as a readable path: ``events[3].data.giver``."""
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in WEBHOOK_FACT_TYPES:
            continue  # the discriminated union's tag is not a field
        else:
            path += f".{part}" if path else str(part)
    return path


def validation_errors(error: ValidationError, prefix: str = "") -> list[ProblemError]:
    errors = []
    for item in error.errors(include_url=False, include_input=False):
        path = json_path(item["loc"], prefix)
        if item["type"] in ("union_tag_invalid", "union_tag_not_found"):
            path = f"{prefix}.type" if prefix else "type"
            message = f"must be one of {', '.join(WEBHOOK_FACT_TYPES)}"
        else:
            message = item["msg"]
        errors.append(ProblemError(path=path or prefix or "body", rule=item["type"], message=message))
    return errors


def is_json_syntax_error(error: ValidationError) -> bool:
    return any(item["type"] == "json_invalid" for item in error.errors(include_url=False))
