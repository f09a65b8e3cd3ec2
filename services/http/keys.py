"""Typed keys for what the application and each request hold."""

from aiohttp import web

from services.bootstrap import Components

COMPONENTS = web.AppKey("components", Components)
# Set by handlers, read by the request middleware for the canonical log line and the ingest counter.
INGEST = web.RequestKey("ingest", bool)
OUTCOME = web.RequestKey("outcome", str)
EVENT_IDS = web.RequestKey("event_ids", list)
LOG_FIELDS = web.RequestKey("log_fields", dict)  # more fields for the request's log line (tenant, source)
