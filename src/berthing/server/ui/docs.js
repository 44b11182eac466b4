// GET /docs: /openapi.json rendered for people (routes by tag, their summaries, parameters, request fields, answers).
"use strict";

const METHODS = ["get", "post", "put", "patch", "delete", "options"];

function resolve(schema, doc) {
  let out = schema || {};
  for (let i = 0; out.$ref && i < 10; i++) {
    out = out.$ref.replace(/^#\//, "").split("/").reduce((node, key) => (node || {})[key], doc) || {};
  }
  return out;
}

function typeOf(schema, doc) {
  const s = resolve(schema, doc);
  if (s.enum) return s.enum.map((v) => JSON.stringify(v)).join(" | ");
  if (s.oneOf || s.anyOf) return (s.oneOf || s.anyOf).map((x) => typeOf(x, doc)).join(" or ");
  if (s.type === "array") return `array of ${typeOf(s.items, doc)}`;
  return s.type || (s.properties ? "object" : "any");
}

function note(schema, doc) {
  const s = resolve(schema, doc);
  const parts = [];
  if (s.description) parts.push(s.description);
  if (s.default !== undefined) parts.push(`default ${JSON.stringify(s.default)}`);
  if (s.minimum !== undefined) parts.push(`minimum ${s.minimum}`);
  return parts.join("; ");
}

function fieldsTable(rows) {
  const table = el("table", { class: "fields" }, el("tr", {}, ...["name", "type", "description"].map((h) => el("th", {}, h))));
  for (const [name, type, text] of rows) table.append(el("tr", {}, el("td", {}, el("code", {}, name)), el("td", {}, type), el("td", {}, text)));
  return table;
}

function operation(path, method, op, doc) {
  const body = el("div", {});
  const params = op.parameters || [];
  if (params.length) {
    body.append(el("h3", {}, "Parameters"), fieldsTable(params.map((p) =>
      [p.name, `${typeOf(p.schema, doc)} (${p.in}${p.required ? ", required" : ""})`, p.description || ""])));
  }
  const content = (op.requestBody || {}).content || {};
  const types = Object.keys(content);
  if (types.length) {
    body.append(el("h3", {}, "Request body"), el("p", { class: "muted" }, types.join(", ")));
    const schema = resolve((content["application/json"] || {}).schema, doc);
    const required = new Set(schema.required || []);
    const rows = Object.entries(schema.properties || {}).map(([name, s]) =>
      [name, typeOf(s, doc) + (required.has(name) ? " (required)" : ""), note(s, doc)]);
    if (rows.length) body.append(fieldsTable(rows));
  }
  const answers = Object.entries(op.responses || {});
  if (answers.length) {
    body.append(el("h3", {}, "Answers"), fieldsTable(answers.map(([code, r]) => [code, "", r.description || ""])));
  }
  return el("details", { class: "op", "data-path": path, "data-method": method },
    el("summary", {}, el("span", { class: `method ${method}` }, method.toUpperCase()), el("span", { class: "path" }, path),
      el("span", { class: "muted" }, op.summary || "")), body);
}

function render(doc) {
  $("version").textContent = doc.info ? doc.info.version : "";
  const groups = new Map();
  for (const [path, item] of Object.entries(doc.paths || {})) {
    for (const method of METHODS) {
      if (!item[method]) continue;
      const tag = (item[method].tags || ["server"])[0];
      if (!groups.has(tag)) groups.set(tag, []);
      groups.get(tag).push(operation(path, method, item[method], doc));
    }
  }
  const nav = [];
  for (const [tag, ops] of groups) {
    $("groups").append(el("section", { class: "card", id: `tag-${tag}`, "data-tag": tag }, el("h2", {}, tag), ...ops));
    nav.push(el("a", { href: `#tag-${tag}` }, tag), " ");
  }
  $("tags").append("Protocols: ", ...nav);
}

document.addEventListener("DOMContentLoaded", async () => {
  try {
    const response = await fetch("/openapi.json");
    if (!response.ok) throw new Error(`GET /openapi.json answered ${response.status}`);
    render(await response.json());
  } catch (error) {
    $("error").textContent = String(error);
    $("error").hidden = false;
  }
});
