"use strict";
// The web UI (DESIGN section 8): hash routes over the read API, with the read key kept for the session only.
// Every value shown comes from an API answer as it is; text goes in with textContent, never as markup.

const KEY_STORAGE = "reciprocity.apiKey";
const LEADERS_MAX = 20;
const UPKEEP_PAGE = 500;
const TIES_PAGE = 100;
// cose places a graph well but its cost grows with the square of the people: 0.6 s for 125, 9 to 18 s for the
// top 1,000 ties of a 5,000-tie community. Above this many people the concentric layout (by influence, the most
// influential in the middle) keeps a 2,000-edge graph interactive within 2 s (bench/ui.py, docs/performance.md).
const FORCE_LAYOUT_NODES_MAX = 150;
const COLOURS = { giver: "#0072B2", receiver: "#E69F00", even: "#999999", selected: "#D55E00", edge: "#8a8a8a" };

const main = document.getElementById("main");
let graph = null; // the cytoscape instance on the community page, destroyed when the page changes

class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

// h("a", {href: "#"}, "text", child...): an element with attributes and children.
function h(tag, attributes, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value === false || value === null || value === undefined) continue;
    if (name === "text") element.textContent = value;
    else if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else element.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child !== null && child !== undefined) element.append(child);
  }
  return element;
}

function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE);
}

async function api(tenant, path, params) {
  const query = new URLSearchParams(Object.entries(params || {}).filter(([, v]) => v !== "" && v != null));
  const url = `/v1/tenants/${encodeURIComponent(tenant)}${path}${query.size ? "?" + query : ""}`;
  const response = await fetch(url, { headers: { Authorization: `Bearer ${apiKey()}` } });
  if (response.ok) return response.json();
  if (response.status === 401 && apiKey()) keyRefused();
  const problem = await response.json().catch(() => ({ title: response.statusText }));
  throw new ApiError(response.status, problem);
}

const hrefs = {
  community: (tenant) => `#/t/${encodeURIComponent(tenant)}`,
  person: (tenant, p) => `#/t/${encodeURIComponent(tenant)}/p/${encodeURIComponent(p)}`,
  upkeep: (tenant) => `#/t/${encodeURIComponent(tenant)}/upkeep`,
  fact: (tenant, eventId) => `#/t/${encodeURIComponent(tenant)}/f/${encodeURIComponent(eventId)}`,
};

function personLink(tenant, participant) {
  return h("a", { href: hrefs.person(tenant, participant), class: "person", text: participant });
}

// A hand-typed link may hold a stray "%"; it is read as it stands rather than failing the page.
function decodePart(part) {
  try {
    return decodeURIComponent(part);
  } catch {
    return part;
  }
}

// "#/t/acme/p/ann" -> {page: "person", tenant: "acme", participant: "ann"}; the community page's filters ride
// after a "?" ("#/t/acme?context.subject=python&limit=2000"), so a filtered view is a link too.
function parseRoute(hash) {
  const [path, query] = hash.replace(/^#\/?/, "").split("?");
  const parts = path.split("/").filter(Boolean).map(decodePart);
  if (parts[0] !== "t" || !parts[1]) return { page: "home" };
  const tenant = parts[1];
  if (parts[2] === "p" && parts[3]) return { page: "person", tenant, participant: parts[3] };
  if (parts[2] === "upkeep") return { page: "upkeep", tenant };
  if (parts[2] === "f" && parts[3]) return { page: "fact", tenant, eventId: parts[3] };
  return { page: "community", tenant, params: new URLSearchParams(query || "") };
}

function renderNav(route) {
  const nav = document.getElementById("nav");
  nav.replaceChildren();
  if (!route.tenant) return;
  const current = route.page === "upkeep" ? "upkeep" : route.page === "community" ? "community" : null;
  nav.append(
    h("a", { href: hrefs.community(route.tenant), "aria-current": current === "community" && "page" }, "Community"),
    h("a", { href: hrefs.upkeep(route.tenant), "aria-current": current === "upkeep" && "page" }, "Upkeep"),
    h("span", { class: "muted", text: `tenant ${route.tenant}` }),
  );
}

function showError(error) {
  const messages = {
    401: "The key was refused. Enter a valid read key.",
    403: "This key lacks the read scope.",
    404: "Not found: no such tenant or person for this key.",
  };
  const text = messages[error.status] || `Something went wrong: ${error.message}`;
  return h("div", { class: "alert", role: "alert" }, h("p", { text }), error.status ? h("p", { class: "muted", text: error.message }) : null);
}

function renderHome() {
  const input = h("input", { id: "tenant", name: "tenant", required: true, pattern: "[a-z0-9][a-z0-9-]{0,62}", autocomplete: "off" });
  const open = (event) => {
    event.preventDefault();
    location.hash = hrefs.community(input.value.trim());
  };
  main.replaceChildren(
    h("h1", { text: "Open a community" }),
    h("form", { onsubmit: open }, h("label", { for: "tenant", text: "Tenant" }), " ", input, " ", h("button", { type: "submit", text: "Open" })),
  );
  input.focus();
}

// The key is asked for once and kept in sessionStorage; nothing is requested before it is given.
function renderKeyPrompt(route, refused) {
  const input = h("input", { id: "api-key", name: "api-key", type: "password", required: true, autocomplete: "off", size: 48 });
  const save = (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY_STORAGE, input.value.trim());
    render();
  };
  const refusal = h("div", { class: "alert", role: "alert", text: "The key was refused. Enter a valid read key." });
  main.replaceChildren(
    h("h1", { text: "Read key" }),
    ...(refused ? [refusal] : []),
    h("p", { text: `This page reads the ledger of tenant ${route.tenant} with a read API key (reciprocity key add ${route.tenant} --scope read). It is kept in this tab only, until you close it.` }),
    h("form", { onsubmit: save, id: "key-form" }, h("label", { for: "api-key", text: "API key" }), " ", input, " ", h("button", { type: "submit", text: "Use key" })),
  );
  input.focus();
}

async function render() {
  if (graph) {
    graph.destroy();
    graph = null;
  }
  const route = parseRoute(location.hash);
  renderNav(route);
  document.getElementById("forget-key").hidden = !apiKey();
  if (route.page === "home") return renderHome();
  if (!apiKey()) return renderKeyPrompt(route, false);
  const pages = { community: renderCommunity, person: renderPerson, upkeep: renderUpkeep, fact: renderFact };
  const hash = location.hash;
  try {
    await pages[route.page](route);
  } catch (error) {
    // Gone if the user moved on, or if the key was refused (the prompt has replaced the page).
    if (hash !== location.hash || !apiKey()) return;
    main.append(showError(error));
  }
}

// Any request answered 401: the key is dropped and asked for again, whatever else the page was loading.
function keyRefused() {
  sessionStorage.removeItem(KEY_STORAGE);
  document.getElementById("forget-key").hidden = true;
  renderKeyPrompt(parseRoute(location.hash), true);
}

// --- community: the graph and the leaderboard -------------------------------------------------------------

const CONTEXT_KINDS = ["location", "activity", "subject"];
const GRAPH_EDGES_DEFAULT = 500;

function filtersOf(params) {
  const kind = CONTEXT_KINDS.find((k) => params.has(`context.${k}`)) || "";
  const limit = Number(params.get("limit")) || GRAPH_EDGES_DEFAULT;
  return { kind, value: kind ? params.get(`context.${kind}`) : "", since: params.get("since") || "", until: params.get("until") || "", limit };
}

function filtersQuery(filters) {
  const params = new URLSearchParams();
  if (filters.kind && filters.value) params.set(`context.${filters.kind}`, filters.value);
  if (filters.since) params.set("since", filters.since);
  if (filters.until) params.set("until", filters.until);
  if (Number(filters.limit) !== GRAPH_EDGES_DEFAULT) params.set("limit", filters.limit);
  return params.size ? `?${params}` : "";
}

function graphControls(route, filters) {
  const kinds = ["", ...CONTEXT_KINDS];
  const kind = h("select", { id: "context-kind", name: "context-kind" }, kinds.map((k) => h("option", { value: k, selected: k === filters.kind, text: k || "any context" })));
  const value = h("input", { id: "context-value", name: "context-value", value: filters.value || "", size: 14 });
  const since = h("input", { id: "since", name: "since", type: "date", value: filters.since || "" });
  const until = h("input", { id: "until", name: "until", type: "date", value: filters.until || "" });
  const limit = h("input", { id: "limit", name: "limit", type: "number", min: 1, max: 5000, value: filters.limit, size: 6 });
  const apply = (event) => {
    event.preventDefault();
    const next = { kind: kind.value, value: value.value.trim(), since: since.value, until: until.value, limit: limit.value };
    const hash = hrefs.community(route.tenant) + filtersQuery(next);
    if (location.hash === hash) render();
    else location.hash = hash;
  };
  return h(
    "form",
    { class: "controls", onsubmit: apply, "aria-label": "Graph filters" },
    h("label", { for: "context-kind", text: "Context" }), kind,
    h("label", { for: "context-value", text: "is" }), value,
    h("label", { for: "since", text: "From" }), since,
    h("label", { for: "until", text: "before" }), until,
    h("label", { for: "limit", text: "Edges" }), limit,
    h("button", { type: "submit", text: "Apply" }),
  );
}

function graphParams(filters) {
  const params = { limit: filters.limit };
  if (filters.kind && filters.value) params[`context.${filters.kind}`] = filters.value;
  if (filters.since) params.since = `${filters.since}T00:00:00Z`;
  if (filters.until) params.until = `${filters.until}T00:00:00Z`;
  return params;
}

function searchForm(route, onFind) {
  const input = h("input", { id: "search", name: "search", list: "people", autocomplete: "off", size: 16 });
  const find = (event) => {
    event.preventDefault();
    onFind(input.value.trim());
  };
  return h(
    "form",
    { class: "controls", onsubmit: find, role: "search" },
    h("label", { for: "search", text: "Find a person" }), input, h("datalist", { id: "people" }),
    h("button", { type: "submit", text: "Find" }),
    h("span", { id: "found", "aria-live": "polite" }),
  );
}

function legend() {
  return h(
    "div",
    { class: "legend" },
    h("span", {}, h("span", { class: "swatch giver" }), "net giver"),
    h("span", {}, h("span", { class: "swatch receiver" }), "net receiver"),
    h("span", {}, h("span", { class: "swatch even" }), "even"),
    h("span", { text: "size: influence; width: value; arrows from giver to receiver up to 1,000 ties" }),
  );
}

function nodeColour(balance) {
  const b = Number(balance);
  return b > 0 ? COLOURS.giver : b < 0 ? COLOURS.receiver : COLOURS.even;
}

// Cytoscape elements from the /graph answer: sizes and widths scaled to the largest in view.
function graphElements(answer) {
  const scoreMax = Math.max(1e-9, ...answer.nodes.map((n) => n.score || 0));
  const valueMax = Math.max(1e-9, ...answer.edges.map((e) => Number(e.value)));
  const nodes = answer.nodes.map((n) => ({
    data: { id: n.participant, size: 12 + 48 * Math.sqrt((n.score || 0) / scoreMax), colour: nodeColour(n.balance), score: n.score || 0 },
  }));
  const edges = answer.edges.map((e, i) => ({
    data: { id: `e${i}`, source: e.from, target: e.to, width: 1 + 7 * Math.sqrt(Number(e.value) / valueMax), edge: e },
  }));
  return nodes.concat(edges);
}

function graphLayout(nodeCount, drawn) {
  // Marks the moment the laid-out graph is on screen (two frames after the layout stops): tests wait for it,
  // and bench/ui.py reads the mark.
  const stop = () => requestAnimationFrame(() => requestAnimationFrame(drawn));
  if (nodeCount <= FORCE_LAYOUT_NODES_MAX) {
    return { name: "cose", animate: false, randomize: true, numIter: 400, nodeRepulsion: () => 6000, idealEdgeLength: () => 50, stop };
  }
  return { name: "concentric", animate: false, concentric: (node) => node.data("score"), levelWidth: () => 0.5, minNodeSpacing: 4, stop };
}

// Straight edges show their arrow; past ARROW_EDGES_MAX, haystack edges (which draw no arrow) are cheaper.
const ARROW_EDGES_MAX = 1000;
const ARROWS = { "curve-style": "straight", "target-arrow-color": COLOURS.edge, "target-arrow-shape": "triangle" };

function graphStyle(edgeCount) {
  const lines = edgeCount <= ARROW_EDGES_MAX ? ARROWS : { "curve-style": "haystack" };
  return [
    { selector: "node", style: { width: "data(size)", height: "data(size)", "background-color": "data(colour)", label: "data(id)", "font-size": 11, "min-zoomed-font-size": 9, "text-valign": "bottom", "text-margin-y": 2, color: "#1a1a1a" } },
    { selector: "edge", style: { width: "data(width)", "line-color": COLOURS.edge, opacity: 0.55, ...lines } },
    { selector: "node:selected", style: { "border-width": 4, "border-color": COLOURS.selected } },
    { selector: "edge:selected", style: { "line-color": COLOURS.selected, "target-arrow-color": COLOURS.selected, opacity: 1 } },
  ];
}

function drawGraph(container, answer, tenant, status) {
  const edgeCount = answer.edges.length;
  delete container.dataset.drawn;
  const drawn = () => {
    container.dataset.drawn = "true";
    performance.mark("graph-drawn", { detail: { edges: edgeCount } });
  };
  const cy = cytoscape({
    container,
    elements: graphElements(answer),
    style: graphStyle(edgeCount),
    layout: graphLayout(answer.nodes.length, drawn),
    hideEdgesOnViewport: edgeCount > ARROW_EDGES_MAX, // panning a large graph redraws nodes only
    textureOnViewport: edgeCount > ARROW_EDGES_MAX,
    minZoom: 0.05,
    maxZoom: 4,
  });
  cy.on("tap", "node", (event) => {
    location.hash = hrefs.person(tenant, event.target.id());
  });
  cy.on("tap", "edge", (event) => {
    const e = event.target.data("edge");
    status.textContent = `${e.from} gave ${e.to}: ${e.count} gives, value ${e.value}, ${e.acknowledged_count} acknowledged, ${e.first_at} to ${e.last_at}`;
  });
  return cy;
}

function graphSummary(answer) {
  const shown = `${answer.nodes.length} people, ${answer.edges.length} ties`;
  const cut = answer.truncated ? " (the strongest only: raise Edges to see more)" : "";
  return `${shown}${cut}, as of log position ${answer.position}.`;
}

function findPerson(tenant, name) {
  const found = document.getElementById("found");
  const node = graph && graph.nodes().filter((n) => n.id() === name || n.id().toLowerCase() === name.toLowerCase())[0];
  if (!node) {
    found.replaceChildren(` No ${name} in this graph.`);
    return;
  }
  graph.elements().unselect();
  node.select();
  graph.animate({ center: { eles: node }, zoom: Math.max(graph.zoom(), 1) }, { duration: 200 });
  const link = personLink(tenant, node.id());
  link.textContent = `Open ${node.id()}`;
  found.replaceChildren(" ", link);
  link.focus();
}

async function loadGraph(route, filters, area) {
  const [summary, container, status] = [area.querySelector(".summary"), area.querySelector("#graph"), area.querySelector(".edge-status")];
  summary.textContent = "Loading the graph…";
  const answer = await api(route.tenant, "/graph", graphParams(filters));
  if (graph) graph.destroy();
  graph = drawGraph(container, answer, route.tenant, status);
  container.setAttribute("aria-label", `Graph of ${graphSummary(answer)} Use the leaderboard or Find a person to open a person with the keyboard.`);
  summary.textContent = graphSummary(answer);
  document.getElementById("people").replaceChildren(...answer.nodes.map((n) => h("option", { value: n.participant })));
}

function leaderboardItem(tenant, item) {
  const sources = item.contributions.map((c, i) => [i ? ", " : "", personLink(tenant, c.from), ` ${formatWeight(c.weight)}`]);
  return h(
    "li",
    { "data-participant": item.participant },
    personLink(tenant, item.participant),
    ` score ${item.score}`,
    h("div", { class: "explanation" }, item.contributions.length ? ["comes from ", sources] : "no endorsements yet"),
  );
}

async function loadLeaderboard(route, board) {
  const answer = await api(route.tenant, "/influence", { limit: LEADERS_MAX });
  const list = answer.items.length ? h("ol", {}, answer.items.map((item) => leaderboardItem(route.tenant, item))) : h("p", { class: "muted", text: "No influence computed yet." });
  board.replaceChildren(h("h2", { text: "Influence" }), h("p", { class: "muted", text: "Score (sums to 100) and what it comes from." }), list);
}

async function renderCommunity(route) {
  const filters = filtersOf(route.params);
  const area = h(
    "section",
    { "aria-label": "Graph" },
    h("p", { class: "summary", "aria-live": "polite" }),
    h("div", { id: "graph", role: "img", "aria-label": "Graph of the community" }),
    legend(),
    h("p", { class: "edge-status muted", "aria-live": "polite" }),
  );
  const board = h("aside", { class: "leaderboard", "aria-label": "Leaderboard" });
  main.replaceChildren(
    h("h1", { text: `Community ${route.tenant}` }),
    graphControls(route, filters),
    searchForm(route, (name) => findPerson(route.tenant, name)),
    h("div", { class: "community" }, area, board),
  );
  await Promise.all([loadGraph(route, filters, area), loadLeaderboard(route, board)]);
}

// --- a person ---------------------------------------------------------------------------------------------

function formatWeight(weight) {
  return Number(weight.toPrecision(3)).toString();
}

function formatShare(share) {
  return share === null || share === undefined ? "none (gave nothing)" : `${Number((share * 100).toFixed(1))}%`;
}

function definitions(pairs) {
  return h("dl", { class: "facts" }, pairs.map(([term, value]) => [h("dt", { text: term }), h("dd", { "data-field": term }, value)]));
}

function table(caption, headings, rows, empty) {
  if (!rows.length) return h("p", { class: "muted", text: empty });
  return h(
    "table",
    {},
    h("caption", { class: "muted", text: caption }),
    h("thead", {}, h("tr", {}, headings.map((heading) => h("th", { scope: "col", text: heading })))),
    h("tbody", {}, rows.map((cells) => h("tr", {}, cells.map((cell) => h("td", {}, cell))))),
  );
}

function balanceSection(b) {
  return h(
    "section",
    { "aria-label": "Balance" },
    h("h2", { text: "Balance" }),
    definitions([
      ["given", `${b.given.value} in ${b.given.count} gives`],
      ["received", `${b.received.value} in ${b.received.count} gives`],
      ["balance", b.balance],
      ["reciprocity", formatShare(b.reciprocity)],
      ["introductions", `${b.introductions.made} made, ${b.introductions.received} received`],
      ["acknowledgements", `${b.acknowledgements.given} given, ${b.acknowledgements.received} received`],
      ["unacknowledged", `${b.unacknowledged.value} in ${b.unacknowledged.count} gives`],
      ["counterparts", String(b.counterparts)],
      ["position", String(b.position)],
    ]),
  );
}

function factLinks(tenant, facts) {
  // Shortened for reading; the link opens the whole fact.
  return facts.map((id, i) => [i ? " " : "", h("a", { href: hrefs.fact(tenant, id), class: "id", title: id, "data-event-id": id, text: id.slice(0, 8) })]);
}

function influenceSection(tenant, influence) {
  if (!influence) return h("section", {}, h("h2", { text: "Influence" }), h("p", { class: "muted", text: "No influence computed for this person yet." }));
  const rows = influence.contributions.map((c) => [personLink(tenant, c.from), formatWeight(c.weight), h("span", {}, factLinks(tenant, c.facts))]);
  return h(
    "section",
    { "aria-label": "Influence" },
    h("h2", { text: "Influence" }),
    definitions([
      ["score", String(influence.score)],
      ["rank", String(influence.rank)],
      ["constraint", influence.constraint === null ? "none" : String(influence.constraint)],
      ["effective size", influence.effective_size === null ? "none" : String(influence.effective_size)],
      ["introductions paid off", String(influence.introductions_paid_off)],
    ]),
    table("What the score comes from (top 5)", ["from", "weight", "facts"], rows, "Nobody endorses this person yet."),
  );
}

function tiesSection(tenant, ties) {
  const rows = ties.items.map((t) => [
    personLink(tenant, t.counterpart),
    `${t.given.value} (${t.given.count})`,
    `${t.received.value} (${t.received.count})`,
    t.balance,
    formatShare(t.reciprocity),
    (t.last_at || "").slice(0, 10),
    t.introduced_by.join(", "),
  ]);
  const more = ties.next_cursor ? h("p", { class: "muted", text: `The ${ties.items.length} strongest ties are shown.` }) : null;
  return h(
    "section",
    { "aria-label": "Ties" },
    h("h2", { text: "Ties" }),
    table("Strongest first", ["with", "given", "received", "balance", "reciprocity", "last", "introduced by"], rows, "No ties yet."),
    more,
  );
}

function upkeepSections(tenant, maintenance) {
  const thanks = maintenance.pending_thanks.map((t) => [personLink(tenant, t.giver), t.value, t.occurred_at.slice(0, 10), h("code", { class: "id", text: t.external_id })]);
  const dormant = maintenance.dormant_ties.map((t) => [personLink(tenant, t.counterpart), t.strength, t.last_at.slice(0, 10)]);
  return [
    h("section", { "aria-label": "Thanks still to give" }, h("h2", { text: "Thanks still to give" }), table("Gives received more than 14 days ago, not acknowledged", ["to", "value", "given on", "fact"], thanks, "Nothing to thank for.")),
    h("section", { "aria-label": "Ties to revive" }, h("h2", { text: "Ties to revive" }), table("Strong ties with no give either way for 90 days", ["with", "strength", "last give"], dormant, "No tie needs upkeep.")),
  ];
}

async function optional(promise) {
  try {
    return await promise;
  } catch (error) {
    if (error.status === 404) return null;
    throw error;
  }
}

async function renderPerson(route) {
  const { tenant, participant } = route;
  const p = encodeURIComponent(participant);
  main.replaceChildren(h("h1", { text: participant }), h("p", { class: "muted", text: "Loading…" }));
  const [balance, influence, ties, maintenance] = await Promise.all([
    api(tenant, `/participants/${p}/balance`),
    optional(api(tenant, `/participants/${p}/influence`)),
    api(tenant, `/participants/${p}/ties`, { order: "strength", limit: TIES_PAGE }),
    api(tenant, "/maintenance", { participant }),
  ]);
  main.replaceChildren(
    h("h1", { text: participant }),
    h("p", {}, h("a", { href: hrefs.community(tenant), text: `Back to community ${tenant}` })),
    h("div", { class: "columns" }, balanceSection(balance), influenceSection(tenant, influence)),
    tiesSection(tenant, ties),
    h("div", { class: "columns" }, upkeepSections(tenant, maintenance)),
  );
  main.focus();
}

// --- a fact, as the log shows it ------------------------------------------------------------------------------

const PERSON_FIELDS = ["giver", "receiver", "introducer", "acknowledger"];

function factValue(tenant, name, value) {
  if (PERSON_FIELDS.includes(name)) return personLink(tenant, value);
  if (name === "introduced") return value.map((p, i) => [i ? " and " : "", personLink(tenant, p)]);
  return typeof value === "object" && value !== null ? JSON.stringify(value) : String(value);
}

async function renderFact(route) {
  const fact = await api(route.tenant, `/events/${encodeURIComponent(route.eventId)}`);
  const data = Object.entries(fact.data).map(([name, value]) => [name, factValue(route.tenant, name, value)]);
  main.replaceChildren(
    h("h1", { text: `${fact.type} ${fact.external_id}` }),
    definitions([
      ["event id", fact.event_id],
      ["source", fact.source],
      ["occurred at", fact.occurred_at],
      ["recorded at", fact.recorded_at],
      ["position", String(fact.position)],
      ...data,
    ]),
  );
  main.focus();
}

// --- upkeep: who should thank or reach out to whom ---------------------------------------------------------

function upkeepLine(tenant, item) {
  if (item.kind === "pending_thanks") {
    return h("li", { "data-kind": item.kind }, "thank ", personLink(tenant, item.counterpart), ` for a give of ${item.value} on ${item.since.slice(0, 10)}`);
  }
  return h("li", { "data-kind": item.kind }, "reach out to ", personLink(tenant, item.counterpart), ` (strength ${item.value}, last give ${item.since.slice(0, 10)})`);
}

function upkeepGroups(tenant, items) {
  const byPerson = new Map();
  for (const item of items) {
    if (!byPerson.has(item.participant)) byPerson.set(item.participant, []);
    byPerson.get(item.participant).push(item);
  }
  return [...byPerson].map(([participant, own]) =>
    h("section", { class: "upkeep-person", "data-participant": participant }, h("h2", {}, personLink(tenant, participant)), h("ul", {}, own.map((item) => upkeepLine(tenant, item)))),
  );
}

async function renderUpkeep(route) {
  const tenant = route.tenant;
  main.replaceChildren(h("h1", { text: "Upkeep" }), h("p", { class: "muted", text: "Loading…" }));
  const items = [];
  let page = await api(tenant, "/upkeep", { limit: UPKEEP_PAGE });
  items.push(...page.items);
  const list = h("div", { id: "upkeep-list" }, upkeepGroups(tenant, items));
  const more = h("button", { type: "button", hidden: !page.next_cursor, text: "Show more" });
  more.addEventListener("click", async () => {
    page = await api(tenant, "/upkeep", { limit: UPKEEP_PAGE, cursor: page.next_cursor });
    items.push(...page.items);
    list.replaceChildren(...upkeepGroups(tenant, items));
    more.hidden = !page.next_cursor;
  });
  const intro = items.length ? `Oldest first, as of ${(page.as_of || "").slice(0, 10)}: who should thank whom, and which strong ties have gone quiet.` : "Nobody owes thanks and no tie needs upkeep.";
  main.replaceChildren(h("h1", { text: "Upkeep" }), h("p", { class: "muted", text: intro }), list, more);
}

document.getElementById("forget-key").addEventListener("click", () => {
  sessionStorage.removeItem(KEY_STORAGE);
  render();
});
window.addEventListener("hashchange", render);
render();
