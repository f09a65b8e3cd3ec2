"""The ceiling of this machine for bench/ingest.py: our webhook edge with nothing behind it.

    .venv/bin/python bench/edge_only.py --port 8080 --secret whsec_...

One aiohttp process on one port, with no middleware, store, log line or metric: it reads the body, checks the
signature (ledger/signatures.py) and the contract (contracts/webhook_bodies.py, each batch item on its own as
ingest does) and answers 202 with the items' ids. bench/ingest.py drives it exactly as it drives `serve`, so
the two rows show what the rest of the ingest path costs on the machine of the day, whose speed moves a lot.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from contracts import json_body
from contracts.webhook_bodies import BATCH_EVENTS_MAX, read_webhook, webhook_adapter
from ledger.signatures import SignatureError, secret_key, verify

PATH = "/v1/tenants/{tenant}/webhooks/{source}"


def app(secret: str) -> web.Application:
    keys = [secret_key(secret)]

    async def authentic(request: web.Request) -> bytes:
        body = await request.read()
        try:
            verify(keys, request.headers, body, time.time())
        except SignatureError as unproven:
            raise web.HTTPUnauthorized(text=str(unproven)) from None
        return body

    async def one(request: web.Request) -> web.Response:
        webhook = read_webhook(await authentic(request))
        return web.json_response({"id": webhook.data.id}, status=202)

    async def batch(request: web.Request) -> web.Response:
        events = json_body.parse_object_with_list(await authentic(request), "events", BATCH_EVENTS_MAX)["events"]
        return web.json_response({"ids": [webhook_adapter.validate_python(e).data.id for e in events]}, status=202)

    application = web.Application()
    application.router.add_post(PATH, one)
    application.router.add_post(PATH + "/batch", batch)
    return application


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret", required=True)
    args = parser.parse_args()
    web.run_app(app(args.secret), host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
