"""Writes the JSON Schemas of the contracts to `contracts/schemas/` and the OpenAPI document to
`contracts/openapi.json` (or checks that they are current).

python -m contracts.export          # rewrite the files
python -m contracts.export --check  # exit 1 when a committed file differs from the models
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from contracts.answers import (
    BatchAnswer,
    EventsPage,
    FactAccepted,
    LoggedFact,
    ParticipantErased,
    ParticipantExport,
    Problem,
)
from contracts.asyncapi import asyncapi_document
from contracts.openapi import openapi_document
from contracts.view_answers import (
    Balance,
    BalancesPage,
    Graph,
    InfluencePage,
    Maintenance,
    Pair,
    ParticipantInfluence,
    TiesPage,
    UpkeepPage,
)
from contracts.webhook_bodies import Batch, Webhook

SCHEMA_DIR = Path(__file__).parent / "schemas"
OPENAPI_FILE = "openapi.json"
ASYNCAPI_FILE = "asyncapi.json"

INPUTS: dict[str, Any] = {"webhook": Webhook, "batch": Batch}
OUTPUTS: dict[str, Any] = {
    "fact-accepted": FactAccepted,
    "batch-answer": BatchAnswer,
    "problem": Problem,
    "logged-fact": LoggedFact,
    "events-page": EventsPage,
    "balance": Balance,
    "pair": Pair,
    "balances-page": BalancesPage,
    "influence-page": InfluencePage,
    "participant-influence": ParticipantInfluence,
    "maintenance": Maintenance,
    "graph": Graph,
    "ties-page": TiesPage,
    "upkeep-page": UpkeepPage,
    "participant-export": ParticipantExport,
    "participant-erased": ParticipantErased,
}


def schemas() -> dict[str, str]:
    """File name -> JSON text, for every contract."""
    rendered = {}
    for mode, models in (("validation", INPUTS), ("serialization", OUTPUTS)):
        for name, model in models.items():
            schema = TypeAdapter(model).json_schema(mode=mode)
            schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
            rendered[f"{name}.schema.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return rendered


def documents() -> dict[str, str]:
    """The interface descriptions beside the schemas: OpenAPI (HTTP) and AsyncAPI (NATS)."""
    return {
        OPENAPI_FILE: json.dumps(openapi_document(), indent=2) + "\n",
        ASYNCAPI_FILE: json.dumps(asyncapi_document(), indent=2) + "\n",
    }


def stale_files(directory: Path = SCHEMA_DIR) -> list[str]:
    wanted = schemas()
    present = {p.name for p in directory.glob("*.schema.json")} if directory.exists() else set()
    differing = [
        name
        for name, text in wanted.items()
        if not (directory / name).exists() or (directory / name).read_text() != text
    ]
    if directory == SCHEMA_DIR:
        for name, text in documents().items():
            document = directory.parent / name
            if not document.exists() or document.read_text() != text:
                differing.append(f"../{name}")
    return sorted(differing + sorted(present - set(wanted)))


def write(directory: Path = SCHEMA_DIR) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    for stray in set(p.name for p in directory.glob("*.schema.json")) - set(schemas()):
        (directory / stray).unlink()
    for name, text in schemas().items():
        (directory / name).write_text(text)
    if directory == SCHEMA_DIR:
        for name, text in documents().items():
            (directory.parent / name).write_text(text)
    return sorted(schemas())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m contracts.export", description=__doc__)
    parser.add_argument("--check", action="store_true", help="only report files that differ from the models")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        for name in stale:
            print(f"stale: contracts/schemas/{name}", file=sys.stderr)
        return 1 if stale else 0
    for name in write():
        print(f"wrote contracts/schemas/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
