"""The graph answer as GraphML (`?format=graphml`), for Gephi, yEd, networkx and the like.

Decimals stay strings (`attr.type="string"`): a double would round large sums, and no answer of ours rounds a
value on the way. A node without an influence score has no `score` data (GraphML's way of saying none).
"""

from __future__ import annotations

from xml.etree import ElementTree

from contracts.view_answers import Graph

GRAPHML_CONTENT_TYPE = "application/graphml+xml"
NAMESPACE = "http://graphml.graphdrawing.org/xmlns"
GRAPH_KEYS = (("position", "long"), ("truncated", "boolean"))
NODE_KEYS = (("given", "string"), ("received", "string"), ("balance", "string"), ("score", "double"))
EDGE_KEYS = (
    ("count", "long"),
    ("value", "string"),
    ("acknowledged_count", "long"),
    ("first_at", "string"),
    ("last_at", "string"),
)


def graphml(graph: Graph) -> bytes:
    """The same nodes and edges as the JSON answer, in its order (node id = the participant), and the graph's
    `position` and `truncated`."""
    root = ElementTree.Element("graphml", xmlns=NAMESPACE)
    for owner, keys in (("graph", GRAPH_KEYS), ("node", NODE_KEYS), ("edge", EDGE_KEYS)):
        for name, kind in keys:
            ElementTree.SubElement(root, "key", {"id": name, "for": owner, "attr.name": name, "attr.type": kind})
    body = ElementTree.SubElement(root, "graph", id="G", edgedefault="directed")
    _data(body, {"position": str(graph.position), "truncated": str(graph.truncated).lower()})
    for node in graph.nodes:
        element = ElementTree.SubElement(body, "node", id=node.participant)
        values = {"given": node.given.value, "received": node.received.value, "balance": node.balance}
        if node.score is not None:
            values["score"] = repr(node.score)
        _data(element, values)
    for edge in graph.edges:
        element = ElementTree.SubElement(body, "edge", source=edge.from_, target=edge.to)
        _data(element, {name: str(getattr(edge, name)) for name, _ in EDGE_KEYS})
    return ElementTree.tostring(root, encoding="utf-8", xml_declaration=True)


def _data(element: ElementTree.Element, values: dict[str, str]) -> None:
    for key, text in values.items():
        ElementTree.SubElement(element, "data", key=key).text = text
