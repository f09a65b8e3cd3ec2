"""The `reciprocity` command: run the service, administer tenants, sources and keys, try it by hand.

Every command takes `--json`; scripts rely on `source add`/`source rotate` printing
{"tenant", "source", "secret"}, `key add` printing {"tenant", "key", "scopes", "id"}, `tenant create` {"tenant"},
and on the lists' shapes in DESIGN section 6. No list ever shows a secret, a key or a key's hash.
`participant export` prints what the export route answers; `participant erase --json` prints
{"tenant", "status": "erased", "token", "position"} (DESIGN section 7).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, TypeAlias

from contracts import export
from contracts.types import PARTICIPANT_PATTERN, SLUG_PATTERN, utc_text
from contracts.webhook_bodies import WEBHOOK_FACT_TYPES
from ledger.group_commit import ConflictPersisted, FactWriter
from ledger.registry import SCOPES, Registry, RegistryError
from ledger.schema import SchemaError, SchemaMode
from ledger.signatures import secret_key, sign
from ledger.store import open_ledger
from projections.influence_view import InfluenceView
from projections.queries import ReciprocityQueries
from projections.rebuild import VIEWS, RebuildRefused, rebuild
from projections.runtime import open_view_store
from services.bootstrap import REGISTRY_FILE, ensure_schemas, open_registry
from services.demo import DemoError, run_demo
from services.logs import configure_logging
from services.privacy import participant_export
from services.progress import ProgressReport
from services.serve import serve
from services.settings import Settings, SettingsError, env_name
from services.tail import CONNECT_RETRY_S, TailError, run_tail

EXIT_USAGE = 2
COMMON_SETTINGS = ("data_dir", "database_url")  # flags of every command
EXIT_FAILED = 1
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"  # what add_subparsers returns


class CommandError(Exception):
    """A command could not do what was asked; the message says why (secrets never appear in it)."""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    parser.add_argument("--version", action="version", version=f"%(prog)s {metadata.version('reciprocity-ledger')}")
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return EXIT_USAGE
    try:
        settings = Settings.from_env(os.environ, **_flag_overrides(args))
        if args.run is not _serve:  # (serve configures its own, per process)
            # On stderr: a command's stdout is its answer, which scripts read (`--json`).
            configure_logging(settings.log_format, settings.log_level, _command_name(args), sys.stderr)
        result = args.run(settings, args)
    except (CommandError, RegistryError, SchemaError, SettingsError, ValueError) as failure:
        _fail(args, str(failure))
        return EXIT_FAILED
    if result is not None:
        _print(args, result)
    return 0


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print machine-readable JSON")
    common.add_argument(
        "--data-dir",
        default=argparse.SUPPRESS,
        help="RECIPROCITY_DATA_DIR: where the SQLite files live (./data)",
    )
    common.add_argument(
        "--database-url",
        default=argparse.SUPPRESS,
        help="RECIPROCITY_DATABASE_URL: postgresql://... (SQLite when unset)",
    )
    parser = argparse.ArgumentParser(prog="reciprocity", description=__doc__, parents=[common])
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    for add_group in (
        _add_serve,
        _add_tenant,
        _add_source,
        _add_key,
        _add_participant,
        _add_send,
        _add_tail,
        _add_demo,
        _add_rebuild,
        _add_migrate,
        _add_contracts,
    ):
        add_group(commands, common)
    return parser


def _add_serve(commands: Commands, common: argparse.ArgumentParser) -> None:
    serve = commands.add_parser("serve", parents=[common], help="run the service (HTTP on 127.0.0.1:8080)")
    for name, field in Settings.model_fields.items():
        if name not in COMMON_SETTINGS:  # every setting is a flag of serve, checked by Settings like the variable
            default = "unset" if field.default is None else field.default
            serve.add_argument(f"--{name.replace('_', '-')}", help=f"{env_name(name)}: {field.description} ({default})")
    serve.set_defaults(run=_serve)


def _add_tenant(commands: Commands, common: argparse.ArgumentParser) -> None:
    tenant = commands.add_parser("tenant", help="tenants").add_subparsers(metavar="ACTION")
    create = tenant.add_parser("create", parents=[common], help="create a tenant")
    create.add_argument("tenant", type=_slug)
    create.set_defaults(run=_tenant_create)
    tenant.add_parser("list", parents=[common], help="the tenants").set_defaults(run=_tenant_list)


def _add_source(commands: Commands, common: argparse.ArgumentParser) -> None:
    source = commands.add_parser("source", help="sources that send webhooks").add_subparsers(metavar="ACTION")
    add = source.add_parser("add", parents=[common], help="add a source; prints its secret once")
    add.add_argument("tenant", type=_slug)
    add.add_argument("source", type=_slug)
    add.add_argument("--rate-limit", type=float, help="facts per second this source may send (off by default)")
    add.set_defaults(run=_source_add)
    rotate = source.add_parser("rotate", parents=[common], help="a new secret; the old one works for a while")
    rotate.add_argument("tenant", type=_slug)
    rotate.add_argument("source", type=_slug)
    rotate.add_argument("--grace-s", type=int, help="how long the old secret keeps working (24 h)")
    rotate.set_defaults(run=_source_rotate)
    listed = source.add_parser("list", parents=[common], help="a tenant's sources (never their secrets)")
    listed.add_argument("tenant", type=_slug)
    listed.set_defaults(run=_source_list)


def _add_key(commands: Commands, common: argparse.ArgumentParser) -> None:
    key = commands.add_parser("key", help="API keys for reading").add_subparsers(metavar="ACTION")
    key_add = key.add_parser("add", parents=[common], help="add an API key; prints it once")
    key_add.add_argument("tenant", type=_slug)
    key_add.add_argument("--scope", action="append", choices=SCOPES, required=True, help="repeat for more")
    key_add.set_defaults(run=_key_add)
    key_list = key.add_parser("list", parents=[common], help="a tenant's keys by id (never the keys)")
    key_list.add_argument("tenant", type=_slug)
    key_list.set_defaults(run=_key_list)
    revoke = key.add_parser("revoke", parents=[common], help="revoke a key: refused within a second")
    revoke.add_argument("tenant", type=_slug)
    revoke.add_argument("id", help="the key's id, as `key add` and `key list` show it")
    revoke.set_defaults(run=_key_revoke)


def _add_participant(commands: Commands, common: argparse.ArgumentParser) -> None:
    participant = commands.add_parser("participant", help="a person's data: export, erase").add_subparsers(
        metavar="ACTION"
    )
    exported = participant.add_parser(
        "export", parents=[common], help="everything held about a participant, as JSON (like the export route)"
    )
    exported.add_argument("tenant", type=_slug)
    exported.add_argument("participant", type=_participant)
    exported.set_defaults(run=_participant_export)
    erase = participant.add_parser(
        "erase", parents=[common], help="erase a participant: their key and id are destroyed (cannot be undone)"
    )
    erase.add_argument("tenant", type=_slug)
    erase.add_argument("participant", type=_participant)
    erase.set_defaults(run=_participant_erase)


def _add_send(commands: Commands, common: argparse.ArgumentParser) -> None:
    send = commands.add_parser("send", parents=[common], help="sign and post one fact to a running server")
    send.add_argument("tenant", type=_slug)
    send.add_argument("source", type=_slug)
    send.add_argument(
        "type",
        choices=list(WEBHOOK_FACT_TYPES),
    )
    send.add_argument(
        "fields",
        nargs="*",
        metavar="FIELD=VALUE",
        help="data fields, e.g. giver=ann receiver=bob kind=help context.location=Utrecht "
        "introduced=bob,cas (dotted names nest)",
    )
    send.add_argument("--data", help="the data object as JSON (instead of FIELD=VALUE)")
    send.add_argument("--id", help="the fact's external id (a new random one by default)")
    send.add_argument("--url", help="the server (http://RECIPROCITY_HTTP_HOST:RECIPROCITY_HTTP_PORT)")
    send.add_argument(
        "--secret-env",
        default="RECIPROCITY_SEND_SECRET",
        help="variable holding the source's whsec_ secret (else read from the local store)",
    )
    send.set_defaults(run=_send)


def _add_tail(commands: Commands, common: argparse.ArgumentParser) -> None:
    follow = commands.add_parser("tail", parents=[common], help="follow one tenant's facts on the NATS stream")
    follow.add_argument("tenant", type=_slug)
    follow.add_argument("--durable", help="a durable consumer name: the next tail with it continues where it was")
    follow.add_argument("--from", dest="start", choices=["start", "now"], default="start", help="(start)")
    follow.add_argument("--limit", type=int, help="stop after this many facts (default: follow forever)")
    follow.add_argument("--nats-url", help="RECIPROCITY_NATS_URL (default: the embedded server of serve)")
    follow.add_argument(
        "--retry-s", type=float, default=CONNECT_RETRY_S,
        help=f"how long to try to reach NATS, at start or after losing it, before giving up ({CONNECT_RETRY_S:g})",
    )  # fmt: skip
    follow.set_defaults(run=_tail)


def _add_demo(commands: Commands, common: argparse.ArgumentParser) -> None:
    demo = commands.add_parser(
        "demo", parents=[common], help="a small community through the real HTTP path: balances, influence, upkeep"
    )
    demo.add_argument(
        "--keep",
        action="store_true",
        help="keep the community in the data directory and go on serving it, with a UI link and a read key, "
        "until Ctrl-C or SIGTERM",
    )
    for name in ("http_host", "http_port"):  # only --keep listens where the settings say; the demo alone, anywhere
        field = Settings.model_fields[name]
        demo.add_argument(f"--{name.replace('_', '-')}", help=f"{env_name(name)}, with --keep ({field.default})")
    demo.set_defaults(run=_demo)


def _add_rebuild(commands: Commands, common: argparse.ArgumentParser) -> None:
    rebuild_view = commands.add_parser(
        "rebuild", parents=[common], help="empty the views and build them again from position 0"
    )
    rebuild_view.add_argument("view", nargs="?", choices=VIEWS, help="one view (default: all; influence follows)")
    rebuild_view.add_argument("--wait-s", type=float, default=10.0, help="how long to wait for the projector lock")
    rebuild_view.set_defaults(run=_rebuild)


def _add_migrate(commands: Commands, common: argparse.ArgumentParser) -> None:
    migrate = commands.add_parser(
        "migrate", parents=[common], help="create the schema of store, registry and views, or upgrade it"
    )
    migrate.set_defaults(run=_migrate)


def _add_contracts(commands: Commands, common: argparse.ArgumentParser) -> None:
    contracts = commands.add_parser("contracts", help="the wire contract").add_subparsers(metavar="ACTION")
    export_schemas = contracts.add_parser("export", parents=[common], help="write the JSON Schemas under contracts/")
    export_schemas.add_argument("--check", action="store_true", help="only fail when the files are stale")
    export_schemas.set_defaults(run=_contracts_export)


def _slug(text: str) -> str:
    if not re.fullmatch(SLUG_PATTERN, text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a slug (lowercase letters, digits and -, max 63)")
    return text


def _participant(text: str) -> str:
    if not re.fullmatch(PARTICIPANT_PATTERN, text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a participant id ({PARTICIPANT_PATTERN})")
    return text


def _command_name(args: argparse.Namespace) -> str:
    """The command as its log lines' role: `rebuild`, `tail`, `key_add`."""
    return args.run.__name__.lstrip("_")


def _flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    # Flags arrive as text, as the variables do: Settings parses and checks both the same way.
    return {name: getattr(args, name, None) for name in Settings.model_fields}


# --- commands -----------------------------------------------------------------------------------------


def _serve(settings: Settings, args: argparse.Namespace) -> None:
    serve(settings)


def _registry(settings: Settings) -> Registry:
    return open_registry(settings)


def _tenant_create(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    _registry(settings).create_tenant(args.tenant)
    return {"tenant": args.tenant}


def _tenant_list(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    tenants = _registry(settings).tenants()
    return {"tenants": [{"tenant": entry.tenant, "created_at": _utc(entry.created_at)} for entry in tenants]}


def _source_add(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    if args.rate_limit is not None and args.rate_limit <= 0:
        raise CommandError("--rate-limit must be above 0 facts per second")
    secret = _registry(settings).add_source(args.tenant, args.source, args.rate_limit)
    return {"tenant": args.tenant, "source": args.source, "secret": secret}


def _source_rotate(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    grace_s = settings.secret_grace_s if args.grace_s is None else args.grace_s
    secret = _registry(settings).rotate_source(args.tenant, args.source, grace_s)
    return {"tenant": args.tenant, "source": args.source, "secret": secret, "previous_valid_for_s": grace_s}


def _source_list(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    sources = [
        {"source": entry.source, "created_at": _utc(entry.created_at), "rate_limit_per_s": entry.rate_limit_per_s}
        for entry in _registry(settings).sources(args.tenant)
    ]
    return {"tenant": args.tenant, "sources": sources}


def _key_add(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    scopes = sorted(set(args.scope))
    new = _registry(settings).add_key(args.tenant, scopes)
    return {"tenant": args.tenant, "key": new.key, "scopes": scopes, "id": new.id}


def _key_list(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    keys = [
        {
            "id": entry.id,
            "scopes": list(entry.scopes),
            "created_at": _utc(entry.created_at),
            "last_used_at": None if entry.last_used_at is None else _utc(entry.last_used_at),
        }
        for entry in _registry(settings).keys(args.tenant)
    ]
    return {"tenant": args.tenant, "keys": keys}


def _key_revoke(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    _registry(settings).revoke_key(args.tenant, args.id)
    return {"tenant": args.tenant, "id": args.id, "revoked": True}


def _require_tenant(settings: Settings, tenant: str) -> None:
    registry = _registry(settings)
    try:
        if tenant not in registry.snapshot().tenants:
            raise CommandError(f"no tenant {tenant!r}")
    finally:
        registry.db.close()


def _participant_export(settings: Settings, args: argparse.Namespace) -> None:
    """Prints the export as JSON whether or not --json is given (indented for a person without it)."""
    _require_tenant(settings, args.tenant)
    limits, mode = settings.connection_limits(), settings.schema_mode()
    ledger = open_ledger(settings.database_url, settings.data_dir, limits, mode)
    try:
        views = open_view_store(settings.database_url, settings.data_dir, limits=limits, schema_mode=mode)
        try:
            queries = ReciprocityQueries(views)
            answer = participant_export(ledger, queries, InfluenceView(views, queries), args.tenant, args.participant)
        finally:
            views.close()
    finally:
        ledger.close()
    if answer is None:
        raise CommandError(f"no participant {args.participant!r} in tenant {args.tenant!r}")
    print(answer.model_dump_json(indent=None if getattr(args, "json", False) else 2))


def _participant_erase(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    """Through a writer of its own: the store's transactions keep it apart from a running server's commits."""
    _require_tenant(settings, args.tenant)
    ledger = open_ledger(settings.database_url, settings.data_dir, settings.connection_limits(), settings.schema_mode())
    try:
        erased = FactWriter(ledger).erase(args.tenant, args.participant)
    except ConflictPersisted:
        raise CommandError("other writers kept naming this participant; run the command again") from None
    finally:
        ledger.close()
    if erased is None:
        raise CommandError(f"no participant {args.participant!r} in tenant {args.tenant!r} (or erased already)")
    return {"tenant": args.tenant, "status": "erased", "token": erased.token, "position": erased.position}


def _utc(seconds: float) -> str:
    return utc_text(datetime.fromtimestamp(seconds, UTC))


def _send(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    data = json.loads(args.data) if args.data else _fields(args.fields)
    if not isinstance(data, dict):
        raise CommandError("--data must be a JSON object")
    data.setdefault("id", args.id or uuid.uuid4().hex)
    body = json.dumps({"type": args.type, "timestamp": datetime.now(UTC).isoformat(), "data": data}).encode()
    secret = os.environ.get(args.secret_env) or _registry(settings).source_secret(args.tenant, args.source)
    message_id = f"msg_{uuid.uuid4().hex}"
    timestamp = int(time.time())
    url = args.url or f"http://{settings.http_host}:{settings.http_port}"
    request = urllib.request.Request(
        f"{url}/v1/tenants/{args.tenant}/webhooks/{args.source}",
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secret_key(secret), message_id, timestamp, body),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return {"http_status": response.status, **json.loads(response.read())}
    except urllib.error.HTTPError as refused:
        answer = json.loads(refused.read() or b"{}")
        raise CommandError(f"{refused.code}: {answer.get('detail', answer)}") from None
    except urllib.error.URLError as unreachable:
        raise CommandError(f"cannot reach {url}: {unreachable.reason} (is `reciprocity serve` running?)") from None


def _fields(pairs: list[str]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise CommandError(f"{pair!r} is not FIELD=VALUE")
        *parents, leaf = name.split(".")
        node = data
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value.split(",") if leaf == "introduced" else value
    return data


def _tail(settings: Settings, args: argparse.Namespace) -> None:
    """Refuses a tenant the store does not know, where it can see the store; NATS alone cannot tell an unknown
    tenant from one without facts yet (tail then waits, and says so)."""
    if args.retry_s <= 0:
        raise CommandError("--retry-s must be above 0 seconds")
    if settings.database_url or (settings.data_dir / REGISTRY_FILE).exists():
        _require_tenant(settings, args.tenant)
    url = settings.nats_url or f"nats://127.0.0.1:{settings.nats_port}"
    try:
        run_tail(
            url,
            args.tenant,
            durable=args.durable,
            from_start=args.start == "start",
            limit=args.limit,
            as_json=getattr(args, "json", False),
            creds=settings.nats_creds,
            retry_s=args.retry_s,
        )
    except TailError as failed:
        raise CommandError(str(failed)) from None


def _demo(settings: Settings, args: argparse.Namespace) -> None:
    """In a throwaway SQLite directory unless --data-dir or --database-url says where, or --keep asks to keep
    it (then in the configured store: RECIPROCITY_DATA_DIR, ./data by default)."""
    as_json = getattr(args, "json", False)
    try:
        if args.keep or getattr(args, "data_dir", None) or getattr(args, "database_url", None):
            run_demo(settings, as_json=as_json, keep=args.keep)
            return
        with tempfile.TemporaryDirectory(prefix="reciprocity-demo-") as scratch:
            run_demo(settings.with_(data_dir=Path(scratch), database_url=None), as_json=as_json)
    except DemoError as refused:
        raise CommandError(str(refused)) from None


def _rebuild(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    """Shows its progress on stderr: a line rewritten in place on a terminal, else log lines (services/progress.py)."""
    try:
        with ProgressReport("rebuild") as progress:
            limits = settings.connection_limits()
            return rebuild(settings.database_url, settings.data_dir, args.view, args.wait_s, limits, progress)
    except RebuildRefused as refused:
        raise CommandError(str(refused)) from None


def _migrate(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    """Each part's schema version before and after; running it again changes nothing."""
    return {
        part: {"found": found, "version": version}
        for part, (found, version) in ensure_schemas(settings, SchemaMode.MIGRATE).items()
    }


def _contracts_export(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    if args.check:
        stale = export.stale_files()
        if stale:
            raise CommandError(f"stale contract files: {', '.join(stale)} (run: reciprocity contracts export)")
        return {"stale": []}
    return {"written": export.write()}


# --- output -------------------------------------------------------------------------------------------


def _print(args: argparse.Namespace, result: dict[str, Any]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(result))
        return
    for name, value in result.items():
        if isinstance(value, list) and value and all(isinstance(row, dict) for row in value):
            print(f"{name}:")  # a list command's rows, one a line
            for row in value:
                print("  " + "  ".join(f"{key} {_cell(cell)}" for key, cell in row.items()))
            continue
        if isinstance(value, dict):
            value = ", ".join(f"{key} {part}" for key, part in value.items())
        if isinstance(value, list):
            value = ", ".join(map(str, value)) or "none"
        print(f"{name}: {value}")
    if "secret" in result or "key" in result:
        print("(shown once: store it now; it cannot be shown again)", file=sys.stderr)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def _fail(args: argparse.Namespace, message: str) -> None:
    if getattr(args, "json", False):
        print(json.dumps({"error": message}))
    else:
        print(f"reciprocity: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
