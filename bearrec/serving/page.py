"""The page `bearrec serve` shows at ``/``: build a history from catalog search (or typed ids and titles), ask
``POST /recommend`` and see the ranked items with their scores. Plain HTML and JavaScript, no outside files;
every catalog string is inserted as text, never as HTML."""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>bearrec</title>
<style>
  body { font: 15px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 60rem; padding: 0 1rem; color: #1d1d1f; }
  h1 { font-size: 1.4rem; margin-bottom: 0.2rem; }
  .sub { color: #666; margin-top: 0; }
  .cols { display: grid; grid-template-columns: 1fr 1fr; gap: 2rem; }
  input[type=search] { width: 100%; box-sizing: border-box; padding: 0.45rem; font-size: 1rem; }
  ul#results { list-style: none; padding: 0; margin: 0.4rem 0; max-height: 18rem; overflow-y: auto; }
  ul#results button { width: 100%; text-align: left; background: none; border: 0; padding: 0.3rem 0.4rem; cursor: pointer; font: inherit; }
  ul#results button:hover { background: #eef3ff; }
  ol#history li { margin: 0.15rem 0; }
  ol#history button { margin-left: 0.4rem; font-size: 0.8rem; }
  .id { color: #888; font-size: 0.85em; }
  .controls { display: flex; gap: 1rem; align-items: center; flex-wrap: wrap; margin: 0.8rem 0; }
  #error { color: #b00020; min-height: 1.4em; }
  table { border-collapse: collapse; width: 100%; }
  th, td { text-align: left; padding: 0.3rem 0.5rem; border-bottom: 1px solid #ddd; }
  td.score { font-variant-numeric: tabular-nums; }
</style>
</head>
<body>
<h1>bearrec</h1>
<p class="sub" id="about">loading&hellip;</p>
<div class="cols">
  <section>
    <h2>History <span class="id">(oldest first)</span></h2>
    <label for="search">Search the catalog, click an item to add it; Enter adds what you typed (an item id or exact title).</label>
    <input type="search" id="search" autocomplete="off" placeholder="title or item id">
    <ul id="results"></ul>
    <ol id="history"></ol>
    <button id="clear" type="button">Clear history</button>
  </section>
  <section>
    <h2>Recommendations</h2>
    <div class="controls">
      <label>k <input type="number" id="k" min="1" value="10" style="width: 4rem"></label>
      <label>decoder <select id="decoder"></select></label>
      <label><input type="checkbox" id="exclude"> exclude history</label>
      <button id="recommend" type="button">Recommend</button>
    </div>
    <p id="error" role="alert"></p>
    <p id="meta" class="id"></p>
    <table id="recommendations" hidden>
      <thead><tr><th>#</th><th>title</th><th>item</th><th>score</th></tr></thead>
      <tbody></tbody>
    </table>
  </section>
</div>
<script>
const picked = [];
const $ = (id) => document.getElementById(id);
function cell(row, text, cls) { const td = row.insertCell(); td.textContent = text; if (cls) td.className = cls; }
function showError(text) { $("error").textContent = text; }

function renderHistory() {
  const list = $("history");
  list.replaceChildren();
  picked.forEach((entry, pos) => {
    const li = document.createElement("li");
    li.textContent = entry.label;
    const remove = document.createElement("button");
    remove.type = "button"; remove.textContent = "remove"; remove.setAttribute("aria-label", "remove " + entry.label);
    remove.onclick = () => { picked.splice(pos, 1); renderHistory(); };
    li.appendChild(remove);
    list.appendChild(li);
  });
}

function add(value, label) { picked.push({value, label}); renderHistory(); showError(""); }

async function search() {
  const query = $("search").value;
  const response = await fetch("/items?limit=15&query=" + encodeURIComponent(query));
  const body = await response.json();
  const list = $("results");
  list.replaceChildren();
  if (!response.ok) { showError(body.detail); return; }
  for (const item of body.items) {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.id = item.id;
    button.append(item.title + " ");
    const id = document.createElement("span"); id.className = "id"; id.textContent = item.id;
    button.appendChild(id);
    button.onclick = () => add(item.id, item.title);
    li.appendChild(button);
    list.appendChild(li);
  }
}

async function recommend() {
  showError("");
  const request = {history: picked.map((e) => e.value), k: Number($("k").value),
                   decoder: $("decoder").value, exclude_history: $("exclude").checked};
  let response, body;
  try {
    response = await fetch("/recommend", {method: "POST", headers: {"Content-Type": "application/json"},
                                          body: JSON.stringify(request)});
    body = await response.json();
  } catch (err) { showError("the server did not answer: " + err); return; }
  const table = $("recommendations"), rows = table.tBodies[0];
  if (!response.ok) { showError(body.detail); table.hidden = true; $("meta").textContent = ""; return; }
  rows.replaceChildren();
  for (const item of body.items) {
    const row = rows.insertRow();
    cell(row, item.rank); cell(row, item.title); cell(row, item.id, "id"); cell(row, item.score.toFixed(3), "score");
  }
  table.hidden = false;
  $("meta").textContent = body.decoder + " decoder, " + body.score + ", " + body.scoring + " scoring"
    + (body.exclude_history ? ", history excluded" : "") + (body.warnings.length ? "; " + body.warnings.join("; ") : "");
}

async function start() {
  const health = await (await fetch("/health")).json();
  $("about").textContent = "run " + health.run + ": " + health.items + " items, beam width " + health.beam_width;
  for (const name of health.decoders) { const option = document.createElement("option"); option.textContent = name; $("decoder").appendChild(option); }
  $("k").max = health.beam_width;
  $("k").value = Math.min(10, health.beam_width);
  $("exclude").checked = health.exclude_history;
  let timer;
  $("search").addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(search, 120); });
  $("search").addEventListener("keydown", (event) => {
    const text = $("search").value.trim();
    if (event.key === "Enter" && text) { add(text, text); $("search").value = ""; search(); }
  });
  $("recommend").onclick = recommend;
  $("clear").onclick = () => { picked.length = 0; renderHistory(); };
  await search();
  document.body.dataset.ready = "true";
}
start();
</script>
</body>
</html>
"""
