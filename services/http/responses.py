"""JSON and problem+json answers, rendered one way everywhere."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from contracts.answers import Problem

PROBLEM_CONTENT_TYPE = "application/problem+json"


def json_answer(body: BaseModel | dict[str, Any], status: int = 200) -> web.Response:
    text = body.model_dump_json(exclude_none=False) if isinstance(body, BaseModel) else json.dumps(body)
    return web.Response(text=text, status=status, content_type="application/json")


def problem_answer(problem: Problem, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        text=problem.model_dump_json(exclude_none=True),
        status=problem.status,
        content_type=PROBLEM_CONTENT_TYPE,
        headers=headers,
    )
