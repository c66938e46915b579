"""The page's style sheet and its one script (the item browser), inlined into every report.

The script reads the items from a <script type="application/json"> block and draws one page of
them at a time; every text goes in through textContent, so nothing a model wrote can become markup.
"""

CSS = """
:root { --fg:#1f2937; --muted:#6b7280; --line:#e5e7eb; --bg:#f8fafc; --card:#fff; --accent:#2563eb;
        --good:#15803d; --bad:#b91c1c; --goodbg:#dcfce7; --badbg:#fee2e2; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif; color:var(--fg); background:var(--bg); }
header.top { background:#0f172a; color:#f8fafc; padding:18px 28px 10px; }
header.top h1 { margin:0 0 4px; font-size:22px; font-weight:600; }
header.top .sub { color:#cbd5e1; margin:0 0 10px; }
header.top nav a { color:#bfdbfe; margin-right:16px; text-decoration:none; font-size:13px; }
header.top nav a:hover { text-decoration:underline; }
main { max-width:1180px; margin:0 auto; padding:8px 24px 48px; }
section.sec { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:6px 22px 18px; margin:18px 0; }
section.sec > h2 { font-size:18px; margin:14px 0 6px; }
h3 { font-size:15px; margin:18px 0 6px; }
p.note, .muted { color:var(--muted); }
p.note { margin:4px 0 10px; }
p.warn { background:#fef3c7; border-left:4px solid #f59e0b; padding:6px 12px; margin:8px 0; }
.problems { background:#fef3c7; border:1px solid #f59e0b; border-radius:6px; padding:8px 14px; margin-top:14px; }
.cards { display:flex; flex-wrap:wrap; gap:10px; margin:10px 0 4px; }
.card { border:1px solid var(--line); border-radius:6px; padding:8px 14px; min-width:150px; background:#fcfcfd; }
.card .k { color:var(--muted); font-size:12px; }
.card .v { font-size:20px; font-weight:600; font-variant-numeric:tabular-nums; }
.card .d { font-size:12px; }
.plots { display:grid; grid-template-columns:repeat(auto-fill,minmax(440px,1fr)); gap:12px; margin:8px 0; }
svg.plot { width:100%; height:auto; background:#fff; border:1px solid var(--line); border-radius:6px; }
svg.plot .ptitle { font-size:13px; font-weight:600; fill:#111827; }
svg.plot .tick { font-size:11px; fill:#4b5563; }
svg.plot .alabel { font-size:11px; fill:#6b7280; }
svg.plot .mlabel { font-size:11px; }
svg.plot .axis { stroke:#9ca3af; }
svg.plot .grid { stroke:#f1f5f9; }
svg.plot .series { stroke-width:1.5; }
svg.plot .marker { stroke-dasharray:4 3; }
table { border-collapse:collapse; margin:6px 0 10px; font-variant-numeric:tabular-nums; }
th, td { border-bottom:1px solid var(--line); padding:4px 10px; text-align:left; vertical-align:top; }
th { background:#f1f5f9; font-weight:600; font-size:13px; max-width:11em; }
td.num, th.num { text-align:right; }
td.num { white-space:nowrap; }
td.up { color:var(--good); } td.down { color:var(--bad); }
.wide { overflow-x:auto; }
.side { display:flex; flex-wrap:wrap; gap:16px; align-items:flex-start; }
.side > .plots { flex:0 1 560px; margin:6px 0; display:block; }
td.links, table.export-table td:first-child, table.type-table td:first-child { white-space:nowrap; }
table.export-table td:last-child { min-width:16em; max-width:340px; }
code, pre { font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace; font-size:12.5px; }
pre { white-space:pre-wrap; word-break:break-word; margin:2px 0; }
details > summary { cursor:pointer; color:var(--accent); margin:6px 0; }
.funnel td.bar { width:420px; }
.funnel .b { height:14px; background:var(--accent); border-radius:2px; }
.diffrow td { background:#fffbeb; }
#browser .controls { display:flex; flex-wrap:wrap; gap:10px; align-items:center; margin:8px 0; }
#browser select { max-width:260px; }
#browser select, #browser input { font:inherit; padding:3px 6px; border:1px solid #cbd5e1; border-radius:4px; }
#browser button { font:inherit; padding:3px 12px; border:1px solid #cbd5e1; border-radius:4px; background:#fff; cursor:pointer; }
#browser button:disabled { opacity:.4; cursor:default; }
.item { border:1px solid var(--line); border-radius:6px; margin:10px 0; padding:8px 12px; }
.item .head { display:flex; gap:8px; align-items:center; font-size:12px; color:var(--muted); flex-wrap:wrap; }
.item .lab { font-size:11px; text-transform:uppercase; letter-spacing:.04em; color:var(--muted); margin-top:6px; }
.item .pair { display:grid; grid-template-columns:1fr 1fr; gap:4px 12px; }
#items { max-height:1100px; overflow-y:auto; border:1px solid var(--line); border-radius:6px; padding:0 10px; }
.item pre { background:#f8fafc; border-radius:4px; padding:4px 8px; max-height:260px; overflow:auto; }
.badge { display:inline-block; border-radius:10px; padding:0 8px; font-size:11px; font-weight:600; }
.b-fixed, .b-right { background:var(--goodbg); color:var(--good); }
.b-broken, .b-wrong { background:var(--badbg); color:var(--bad); }
.b-still-wrong { background:#f3f4f6; color:#7f1d1d; } .b-still-right { background:#f3f4f6; color:#14532d; }
.b-none { background:#f3f4f6; color:var(--muted); }
footer { color:var(--muted); font-size:12px; text-align:center; margin:20px 0; }
"""

JS = r"""
(function () {
  "use strict";
  var holder = document.getElementById("items-data");
  var root = document.getElementById("browser");
  if (!holder || !root) return;
  var data = JSON.parse(holder.textContent);
  var items = data.items, per = data.per_page || 50, page = 0, shown = items;
  var el = function (tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  };
  var q = function (sel) { return root.querySelector(sel); };
  var fCat = q("#f-cat"), fSuite = q("#f-suite"), fType = q("#f-type"), fText = q("#f-text");
  var list = q("#items"), info = q("#pageinfo"), prev = q("#prev"), next = q("#next");
  var CAT = {"fixed": "fixed", "broken": "broken", "still-wrong": "still wrong", "still-right": "still right",
             "right": "right", "wrong": "wrong", "none": "not scored"};
  function option(select, value, label) { var o = el("option", null, label); o.value = value; select.appendChild(o); }
  function counts(key) {
    var c = {};
    items.forEach(function (it) { c[it[key]] = (c[it[key]] || 0) + 1; });
    return c;
  }
  var cc = counts("c");
  option(fCat, "", "all (" + items.length + ")");
  ["fixed", "broken", "still-wrong", "still-right", "right", "wrong", "none"].forEach(function (k) {
    if (cc[k]) option(fCat, k, CAT[k] + " (" + cc[k] + ")");
  });
  var sc = counts("s");
  option(fSuite, "", "every suite");
  Object.keys(sc).sort().forEach(function (k) { option(fSuite, k, k + " (" + sc[k] + ")"); });
  function fillTypes() {
    var suite = fSuite.value, c = {};
    items.forEach(function (it) { if (!suite || it.s === suite) c[it.k] = (c[it.k] || 0) + 1; });
    var keep = fType.value;
    fType.textContent = "";
    option(fType, "", "every type");
    Object.keys(c).sort().forEach(function (k) { if (k) option(fType, k, k + " (" + c[k] + ")"); });
    fType.value = c[keep] ? keep : "";
  }
  fillTypes();
  function block(label, text, cls) {
    var d = el("div", cls);
    d.appendChild(el("div", "lab", label));
    d.appendChild(el("pre", null, text === null || text === undefined ? "-" : text));
    return d;
  }
  function verdictBadge(v) { return el("span", "badge b-" + (v === null ? "none" : v ? "right" : "wrong"),
                                       v === null ? "not run" : v ? "right" : "wrong"); }
  function card(it) {
    var d = el("div", "item");
    var head = el("div", "head");
    head.appendChild(el("span", "badge b-" + it.c, CAT[it.c] || it.c));
    head.appendChild(el("span", null, it.s + (it.k ? " · " + it.k : "") + (it.id ? " · " + it.id : "")));
    d.appendChild(head);
    d.appendChild(block("prompt", it.p));
    d.appendChild(block(it.rl || "reference", it.r));
    var pair = el("div", "pair");
    [["b", "bv", data.labels[0]], ["t", "tv", data.labels[1]]].forEach(function (x) {
      if (!(x[0] in it)) return;
      var side = block("", it[x[0]]);
      var lab = side.firstChild;
      lab.textContent = x[2] + " output ";
      lab.appendChild(verdictBadge(it[x[1]]));
      pair.appendChild(side);
    });
    d.appendChild(pair);
    return d;
  }
  function apply() {
    var cat = fCat.value, suite = fSuite.value, type = fType.value, text = fText.value.toLowerCase();
    shown = items.filter(function (it) {
      if (cat && it.c !== cat) return false;
      if (suite && it.s !== suite) return false;
      if (type && it.k !== type) return false;
      if (text && [it.p, it.r, it.b, it.t, it.id].join("\n").toLowerCase().indexOf(text) < 0) return false;
      return true;
    });
    page = 0;
    draw();
  }
  function draw() {
    var pages = Math.max(1, Math.ceil(shown.length / per));
    page = Math.min(page, pages - 1);
    list.textContent = "";
    var frag = document.createDocumentFragment();
    shown.slice(page * per, (page + 1) * per).forEach(function (it) { frag.appendChild(card(it)); });
    list.appendChild(frag);
    var a = shown.length ? page * per + 1 : 0, b = Math.min(shown.length, (page + 1) * per);
    info.textContent = "items " + a + "–" + b + " of " + shown.length + " · page " + (page + 1) + " of " + pages;
    prev.disabled = page === 0;
    next.disabled = page >= pages - 1;
  }
  fCat.addEventListener("change", apply);
  fSuite.addEventListener("change", function () { fillTypes(); apply(); });
  fType.addEventListener("change", apply);
  var timer = null;
  fText.addEventListener("input", function () { clearTimeout(timer); timer = setTimeout(apply, 150); });
  prev.addEventListener("click", function () { page -= 1; draw(); });
  next.addEventListener("click", function () { page += 1; draw(); });
  apply();
})();
"""
