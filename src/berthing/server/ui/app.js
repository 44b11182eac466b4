// berthing's playground: pick a served model, fill the form its task needs, and call the same
// POST /predictions/{name}/{version} route that curl calls. Plain DOM, no build step, nothing from another origin.
"use strict";

const TOKEN_KEY = "berthing-inference-token";
const EXAMPLES = {
  classify: { text: "The battery lasts two days and the screen is bright." },
  ner: { text: "Angela Merkel met Emmanuel Macron in Paris on Monday." },
  embed: { texts: "How do I reset my password?\nI forgot my password.\nThe weather is nice today." },
  qa: { question: "Where is the Eiffel Tower?", context: "The Eiffel Tower is a wrought-iron tower in Paris, France." },
  rerank: { query: "how to reset a password", texts: "Open settings and choose 'reset password'.\nOur office opens at nine.\nPasswords must have eight characters." },
};
let models = [];

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

function headers(json) {
  const out = json ? { "Content-Type": "application/json" } : {};
  if (token()) out.Authorization = "Bearer " + token();
  return out;
}

function askToken(why) {
  $("token-why").textContent = why || "This server needs its inference token.";
  $("token-form").hidden = false;
  $("token").focus();
}

function showError(status, message) {
  $("error-status").textContent = status;
  $("error-message").textContent = message;
  $("error").hidden = false;
}

async function loadModels() {
  const response = await fetch("/ui/models", { headers: headers(false) });
  const data = await response.json().catch(() => null);
  if (response.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    askToken(data && data.message);
    return;
  }
  if (!response.ok) {
    showError(response.status + (data && data.type ? " " + data.type : ""), data ? data.message : response.statusText);
    return;
  }
  $("token-form").hidden = true;
  models = data.models;
  const select = $("model");
  select.replaceChildren(...models.map((m, i) => el("option", { value: String(i) },
    `${m.name} ${m.version}${m.default ? "" : " (not default)"} · ${m.task}`)));
  select.disabled = models.length === 0;
  $("submit").disabled = models.length === 0 || !data.predictions;
  if (!models.length) showError("", "No model is loaded.");
  else if (!data.predictions) showError("", "The /predictions routes this page calls are off (--protocols): turn torchserve on.");
  else pickModel();
}

function current() {
  return models[Number($("model").value)];
}

function pickModel() {
  const model = current();
  $("task").textContent = model.task;
  for (const field of document.querySelectorAll(".field")) {
    field.hidden = !field.dataset.for.split(" ").includes(model.task);
  }
  $("texts-label").textContent = model.task === "rerank" ? "Candidate texts, one per line" : "Texts, one per line";
  for (const [id, value] of Object.entries(EXAMPLES[model.task] || {})) {
    if (!$(id).value) $(id).value = value;
  }
  $("answer").hidden = true;
  $("error").hidden = true;
}

function lines(id) {
  return $(id).value.split("\n").map((s) => s.trim()).filter(Boolean);
}

function body(task) {
  const out = {
    classify: () => ({ input: $("text").value }),
    ner: () => ({ input: $("text").value }),
    embed: () => ({ input: lines("texts") }),
    qa: () => ({ question: $("question").value, context: $("context").value }),
    rerank: () => ({ query: $("query").value, texts: lines("texts") }),
  }[task]();
  if (!$("truncate").checked) out.truncate = false;
  return out;
}

function shellQuote(text) {
  return "'" + text.replace(/'/g, "'\\''") + "'";
}

function curl(url, payload) {
  const parts = [`curl -X POST ${shellQuote(location.origin + url)}`, "-H 'Content-Type: application/json'"];
  if (token()) parts.push('-H "Authorization: Bearer $BERTHING_INFERENCE_TOKEN"');
  parts.push("-d " + shellQuote(JSON.stringify(payload)));
  return parts.join(" \\\n  ");
}

async function run() {
  const model = current();
  if (!model || $("submit").disabled) return;
  const payload = body(model.task);
  const url = `/predictions/${encodeURIComponent(model.name)}/${encodeURIComponent(model.version)}`;
  $("error").hidden = true;
  $("submit").disabled = true;
  $("curl").textContent = curl(url, payload);
  $("request").hidden = false;
  try {
    const started = performance.now();
    const response = await fetch(url, { method: "POST", headers: headers(true), body: JSON.stringify(payload) });
    const text = await response.text();
    const elapsed = performance.now() - started;
    let data = null;
    try { data = JSON.parse(text); } catch { /* not JSON: shown as it came */ }
    if (!response.ok) {
      $("answer").hidden = true;
      if (response.status === 401) { sessionStorage.removeItem(TOKEN_KEY); askToken(data && data.message); }
      showError(response.status + (data && data.type ? " " + data.type : ""), data && data.message ? data.message : text);
      return;
    }
    $("latency").textContent = elapsed < 10 ? elapsed.toFixed(1) + " ms" : Math.round(elapsed) + " ms";
    $("raw").textContent = JSON.stringify(data, null, 2);
    $("summary").textContent = `${model.name} ${model.version} · ${model.task}`;
    $("result").replaceChildren(RENDER[model.task](data, payload));
    $("answer").hidden = false;
  } catch (error) {
    showError("network", String(error));
  } finally {
    $("submit").disabled = false;
  }
}

function bars(rows) {
  const list = el("div", { class: "bars" });
  for (const { label, score } of rows) {
    const fill = el("div", { class: "fill" });
    fill.style.width = (Math.max(0, Math.min(1, score)) * 100).toFixed(1) + "%";
    list.append(el("div", { class: "bar-row", "data-label": label },
      el("span", { class: "label" }, label), el("div", { class: "bar" }, fill), el("span", { class: "score" }, score.toFixed(4))));
  }
  return list;
}

function classify(data) {
  const rows = Array.isArray(data) ? data.map((d) => ({ label: d.label, score: d.score }))
    : Object.entries(data.scores || { [data.label]: data.score }).map(([label, score]) => ({ label, score }));
  rows.sort((a, b) => b.score - a.score);
  return bars(rows);
}

function cosine(a, b) {
  let dot = 0, na = 0, nb = 0;
  for (let i = 0; i < a.length; i++) { dot += a[i] * b[i]; na += a[i] * a[i]; nb += b[i] * b[i]; }
  return dot / (Math.sqrt(na) * Math.sqrt(nb));
}

function short(text, size) {
  const chars = Array.from(text);
  return chars.length > size ? chars.slice(0, size - 1).join("") + "…" : text;
}

function embed(vectors, payload) {
  const texts = payload.input;
  const head = el("tr", {}, el("th", {}, ""), ...texts.map((t, j) => el("th", { title: t, scope: "col" }, `${j + 1}`)));
  const table = el("table", { class: "heat" }, head);
  vectors.forEach((a, i) => {
    const row = el("tr", {}, el("th", { title: texts[i], scope: "row" }, `${i + 1}. ${short(texts[i], 40)}`));
    vectors.forEach((b, j) => {
      const value = cosine(a, b);
      const cell = el("td", { "data-i": String(i), "data-j": String(j), title: `${texts[i]}\n${texts[j]}` }, value.toFixed(2));
      const strength = Math.max(0, Math.min(1, value));  // 0 (or below) light, 1 dark
      cell.style.backgroundColor = `hsl(221, 75%, ${Math.round(97 - 52 * strength)}%)`;
      cell.style.color = strength > 0.6 ? "#fff" : "";
      row.append(cell);
    });
    table.append(row);
  });
  const note = el("p", { class: "muted" }, `cosine similarity of ${vectors.length} embeddings of ${vectors[0] ? vectors[0].length : 0} dimensions`);
  return el("div", {}, note, table);
}

// The server's offsets count characters (code points); JavaScript strings count UTF-16 units, so slice code points.
function highlighted(text, spans, make) {
  const chars = Array.from(text);
  const out = el("p", { class: "marked" });
  let at = 0;
  for (const span of [...spans].sort((a, b) => a.start - b.start)) {
    if (span.start < at || span.end <= span.start) continue;
    out.append(chars.slice(at, span.start).join(""));
    out.append(make(span, chars.slice(span.start, span.end).join("")));
    at = span.end;
  }
  out.append(chars.slice(at).join(""));
  return out;
}

function ner(entities, payload) {
  const label = (e) => e.entity_group || e.entity;
  const marked = highlighted(payload.input, entities, (e, piece) => el("mark",
    { class: "entity", "data-start": String(e.start), "data-end": String(e.end), "data-label": label(e), title: `score ${e.score.toFixed(4)}` },
    el("span", { class: "span-text" }, piece), el("span", { class: "tag" }, label(e))));
  const table = el("table", { class: "list" }, el("tr", {}, ...["text", "label", "score", "characters"].map((h) => el("th", {}, h))));
  for (const e of entities) {
    table.append(el("tr", {}, el("td", {}, e.word), el("td", {}, label(e)), el("td", {}, e.score.toFixed(4)), el("td", {}, `${e.start}–${e.end}`)));
  }
  return el("div", {}, marked, entities.length ? table : el("p", { class: "muted" }, "no entities found"));
}

function qa(data, payload) {
  const answers = Array.isArray(data) ? data : [data];
  const best = answers[0];
  const found = best && best.end > best.start;
  const marked = highlighted(payload.context, found ? [best] : [], (a, piece) => el("mark",
    { class: "answer", "data-start": String(a.start), "data-end": String(a.end) }, piece));
  const line = el("p", { class: "qa-answer" }, found
    ? el("span", {}, "answer ", el("strong", { id: "qa-text" }, best.answer), " · score ",
      el("strong", { id: "qa-score" }, best.score.toFixed(4)), ` · characters ${best.start}–${best.end}`)
    : `no answer in the context (score ${best ? best.score.toFixed(4) : "–"})`);
  const out = el("div", {}, line, marked);
  if (answers.length > 1) out.append(bars(answers.map((a) => ({ label: a.answer, score: a.score }))));
  return out;
}

function rerank(ranking, payload) {
  const list = el("ol", { class: "ranking" });
  for (const entry of ranking) {
    const fill = el("div", { class: "fill" });
    fill.style.width = (Math.max(0, Math.min(1, entry.score)) * 100).toFixed(1) + "%";
    list.append(el("li", { class: "rank", "data-index": String(entry.index) },
      el("span", { class: "score" }, entry.score.toFixed(4)), el("div", { class: "bar" }, fill),
      el("span", { class: "text" }, payload.texts[entry.index])));
  }
  return list;
}

const RENDER = { classify, embed, ner, qa, rerank };

async function copyCurl() {
  const text = $("curl").textContent;
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    const range = document.createRange();
    range.selectNodeContents($("curl"));
    getSelection().removeAllRanges();
    getSelection().addRange(range);
    document.execCommand("copy");
  }
  $("copy").textContent = "Copied";
  setTimeout(() => { $("copy").textContent = "Copy"; }, 1500);
}

document.addEventListener("DOMContentLoaded", () => {
  $("model").addEventListener("change", pickModel);
  $("form").addEventListener("submit", (event) => { event.preventDefault(); run(); });
  $("copy").addEventListener("click", copyCurl);
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("token").value.trim();
    if (!value) return;
    sessionStorage.setItem(TOKEN_KEY, value);
    $("token").value = "";
    $("token-form").hidden = true;
    loadModels();
  });
  document.addEventListener("keydown", (event) => {
    if ((event.ctrlKey || event.metaKey) && event.key === "Enter" && $("token-form").hidden) {
      event.preventDefault();
      run();
    }
  });
  loadModels().catch((error) => showError("network", String(error)));
});
