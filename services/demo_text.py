"""What `reciprocity demo` prints for a person: three tables, each with captions that say what its numbers are.

Why captions: a new user reads the demo before any documentation, so every number has to say what it counts
and in which unit right where it is shown. Every line stays within WIDTH_MAX columns, so a terminal of that
width shows the tables unbroken; a table's last column wraps instead.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

WIDTH_MAX = 100
LAST_COLUMN_MIN = 20  # a wrapping column never gets narrower, even beside very long ids


def render(result: dict[str, Any]) -> str:
    """The intro, the three tables and, when the demo keeps serving, where and how to explore the community."""
    people = len(result["balances"])
    state = "still serving it, below" if "ui_url" in result else "now stopped"
    intro = paragraph(
        f"{result['facts_sent']} signed facts about {people} people, sent by {len(result['sources'])} sources "
        f"({', '.join(result['sources'])}) to tenant {result['tenant']} over HTTP to the real service at "
        f"{result['url']} ({state}), read back at position {result['position']}; {result['duration_s']} s in all."
    )
    parts = [
        intro,
        balances_table(result["balances"]),
        influence_table(result["influence"], people),
        upkeep_table(result["maintenance"], people),
    ]
    parts.append(explore_text(result) if "ui_url" in result else "To explore it afterwards: reciprocity demo --keep\n")
    return "\n".join(parts)


def balances_table(balances: list[dict[str, Any]]) -> str:
    rows = [
        [
            b["participant"],
            b["given"]["value"],
            b["received"]["value"],
            b["balance"],
            str(b["counterparts"]),
            "-" if b["reciprocity"] is None else f"{b['reciprocity']:.0%}",
            f"{b['unacknowledged']['count']} ({b['unacknowledged']['value']})" if b["unacknowledged"]["count"] else "-",
        ]
        for b in balances
    ]
    given, received = (sum(Decimal(b[side]["value"]) for b in balances) for side in ("given", "received"))
    # Everything given was received by someone: the totals row shows the books balance.
    rows.append(["total", str(given), str(received), str(sum(Decimal(b["balance"]) for b in balances)), "", "", ""])
    headers = ["participant", "given", "received", "balance", "counterparts", "reciprocity", "not thanked"]
    captions = [
        "given, received: the value of the gives they made and of the gives made to them (a value is what "
        "the source said a give was worth, 1 by default); a reversed give counts nowhere",
        "balance: given minus received (above 0: they gave more than they got); the total is 0",
        "counterparts: the people they gave to or received from",
        "reciprocity: share of what they gave that came back from the same people: from each person they "
        "gave to, counted up to what they gave that person; gives from anyone else do not raise it",
        "not thanked: gives they received and have not acknowledged yet, how many (their value)",
    ]
    title = "Balances: the value each person gave and received"
    return table(title, headers, rows, right={1, 2, 3, 4, 5, 6}) + captions_text(captions)


def influence_table(influence: list[dict[str, Any]], people: int) -> str:
    rows = [
        [
            str(item["rank"]),
            item["participant"],
            f"{item['score']:.2f}",
            "-" if item["constraint"] is None else f"{item['constraint']:.3f}",
            str(item["introductions_paid_off"]),
            ", ".join(map(contribution_text, item["contributions"])) or "-",
        ]
        for item in influence
    ]
    headers = ["rank", "participant", "score", "constraint", "intros paid off", "score points from (facts)"]
    captions = [
        "score: their share, in points, of the 100 points of influence the community shares (weighted "
        "PageRank): gives to people who are valued themselves raise it; a thanked give counts double, an "
        "older one less",
        "score points from: how many of those points each person they gave to or introduced passes on to "
        "them (the largest 5), and through how many of their gives and introductions; the rest of a score "
        "is a share every person gets alike, and smaller flows",
        "constraint: from 0 to 1; low means a broker between people who are otherwise apart",
        "intros paid off: introductions they made after which the two introduced exchanged a give",
    ]
    title = f"Top influencers: the {len(influence)} highest scores of {people}"
    return table(title, headers, rows, right={0, 2, 3, 4}) + captions_text(captions)


def contribution_text(contribution: dict[str, Any]) -> str:
    """`lindy 7.30 (3)`: 7.30 of the score's points flow from lindy, through 3 facts."""
    return f"{contribution['from']} {contribution['weight']:.2f} ({len(contribution['facts'])})"


def upkeep_table(maintenance: dict[str, dict[str, Any]], people: int) -> str:
    """Each pending thanks and dormant tie of the people shown, as who should do what for whom."""
    rows: list[list[str]] = []
    for person, answer in maintenance.items():
        as_of = datetime.fromisoformat(answer["as_of"])
        for tie in answer["dormant_ties"]:
            todo = f"{person} should reach out to {tie['counterpart']}"
            rows.append([todo, *when(tie["last_at"], as_of), tie["strength"]])
        for thanks in answer["pending_thanks"]:
            todo = f"{person} should thank {thanks['giver']}"
            rows.append([todo, *when(thanks["occurred_at"], as_of), thanks["value"]])
        if not answer["dormant_ties"] and not answer["pending_thanks"]:
            rows.append([f"{person}: nothing to do", "", "", ""])
    captions = [
        "X should thank Y: Y gave X something over 14 days ago that X has not acknowledged yet; since: "
        "when it was given; value: that give's",
        "X should reach out to Y: one of the community's strongest ties (the top quarter by value exchanged) "
        "with no give either way for over 90 days; since: their last give; value: all they exchanged",
        "days ago: counted back from the community's latest fact",
    ]
    shown = ", ".join(maintenance)
    title = f"Upkeep of a selection of {len(maintenance)} of the {people} people ({shown})"
    headers = ["to do", "since", "days ago", "value"]
    return table(title, headers, rows, right={2, 3}) + captions_text(captions)


def when(moment: str, as_of: datetime) -> tuple[str, str]:
    at = datetime.fromisoformat(moment)
    return at.date().isoformat(), str((as_of - at).days)


def explore_text(result: dict[str, Any]) -> str:
    """Where the kept community is served and the read key to explore it with (shown here only)."""
    api = f"{result['url']}/v1/tenants/{result['tenant']}/balances"
    return (
        "\n".join(
            [
                "Explore it: the service goes on serving this community.",
                f"  open      {result['ui_url']}",
                f"  read key  {result['read_key']}",
                "            (the page asks for it once; it is shown only here, store it now)",
                f'  or        curl -H "Authorization: Bearer {result["read_key"]}" \\',
                f"              {api}",
                *serve_again(result["data_dir"]),
                KEEP_LAST_LINE,
            ]
        )
        + "\n"
    )


KEEP_LAST_LINE = "Serving until Ctrl-C (or SIGTERM)."  # the last line --keep prints before it serves on


def serve_again(data_dir: str | None) -> list[str]:
    """Where the data stays, and the command that serves it again."""
    if data_dir is None:
        return ["The data stays in the PostgreSQL store; to serve it again, with the same RECIPROCITY_DATABASE_URL:",
                "  reciprocity serve"]  # fmt: skip
    path = Path(data_dir)
    # Within the working directory the path is shown from it (./data by default): short, and as typed.
    shown = f"./{path.relative_to(Path.cwd())}" if path.is_relative_to(Path.cwd()) else str(path)
    # By flag, which wins over RECIPROCITY_DATA_DIR, so the command serves this directory in any environment.
    return ["The data stays after it stops; to serve it again:", f"  reciprocity serve --data-dir {shown}"]


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> str:
    """Plain text with aligned columns; numbers (columns in `right`) align on the right. The last column
    wraps at its commas, so that no line runs past WIDTH_MAX."""
    widths = [max([len(headers[i]), *(len(row[i]) for row in rows)]) for i in range(len(headers))]
    room = WIDTH_MAX - sum(widths[:-1]) - 2 * (len(widths) - 1)
    widths[-1] = min(widths[-1], max(room, LAST_COLUMN_MIN))

    def lines(cells: Sequence[str]) -> list[str]:
        *first, last = cells
        head = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(first, widths, strict=False))]
        indent = " " * len("  ".join(head))
        parts = wrap_list(last, widths[-1])
        if len(widths) - 1 in right:
            parts = [part.rjust(widths[-1]) for part in parts]
        return [("  ".join([*head, part]) if n == 0 else f"{indent}  {part}").rstrip() for n, part in enumerate(parts)]

    rule = "  ".join("-" * w for w in widths)
    body = [line for row in rows for line in lines(row)]
    return "\n".join([title, "=" * len(title), *lines(headers), rule, *body]) + "\n"


def wrap_list(text: str, width: int) -> list[str]:
    """A comma-separated list in lines of at most `width`, broken only after a comma; an item longer than
    `width` gets a line of its own."""
    lines: list[str] = []
    for item in text.split(", "):
        # width - 1: the comma that ends a line when another item follows must fit too.
        if lines and len(lines[-1]) + len(", ") + len(item) <= width - 1:
            lines[-1] += f", {item}"
        else:
            if lines:
                lines[-1] += ","
            lines.append(item)
    return lines or [""]


def captions_text(captions: Sequence[str]) -> str:
    return "".join(paragraph(caption, indent="  ") for caption in captions)


def paragraph(text: str, indent: str = "") -> str:
    """`text` wrapped to WIDTH_MAX, continuation lines indented by `indent`."""
    return textwrap.fill(text, WIDTH_MAX, subsequent_indent=indent, break_on_hyphens=False) + "\n"
