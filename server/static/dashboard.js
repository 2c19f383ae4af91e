// semcache dashboard: fetches /dashboard/data and draws it as inline SVG, every 10 seconds.
// No library and nothing from elsewhere: the page's Content Security Policy allows only this
// server. Every text from the server goes in through textContent, never as markup.
"use strict";

(function () {
  const REFRESH_MS = 10000;
  const TIMEOUT_MS = 8000;
  const WINDOWS = ["1h", "24h", "7d", "30d"];
  const SVG_NS = "http://www.w3.org/2000/svg";
  const WIDTH = 640;

  // The key, namespace and window live in the URL fragment: it is never sent to the server,
  // and a bookmarked view comes back as it was.
  const hash = new URLSearchParams(location.hash.slice(1));
  const state = {
    key: hash.get("key") || "",
    namespace: hash.get("ns") || "",
    window: WINDOWS.includes(hash.get("window")) ? hash.get("window") : "24h",
    inFlight: false,
    data: null,
  };

  // formatting -------------------------------------------------------------------------------

  const int = (n) => Math.round(n).toLocaleString("en-US");
  const pct = (x) => (x === null || x === undefined ? "–" : (100 * x).toFixed(1) + "%");
  function usd(x) {
    const digits = Math.abs(x) >= 1 || x === 0 ? 2 : 4;
    return "$" + x.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
  }
  function compact(n) {
    if (n >= 1e9) return (n / 1e9).toFixed(1) + "G";
    if (n >= 1e6) return (n / 1e6).toFixed(1) + "M";
    if (n >= 1e4) return (n / 1e3).toFixed(0) + "k";
    return int(n);
  }
  const DAYS = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
  const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
  const two = (n) => String(n).padStart(2, "0");
  const clock = (d) => two(d.getHours()) + ":" + two(d.getMinutes());
  const day = (d) => DAYS[d.getDay()] + " " + d.getDate() + " " + MONTHS[d.getMonth()];
  const when = (t) => { const d = new Date(t * 1000); return day(d) + " " + clock(d); };
  function bucketName(seconds) {
    if (seconds < 3600) return seconds / 60 === 1 ? "minute" : seconds / 60 + " minutes";
    return seconds / 3600 === 1 ? "hour" : seconds / 3600 + " hours";
  }

  // DOM helpers ------------------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
    for (const child of children) node.append(child);
    return node;
  }
  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
    for (const child of children) node.append(child);
    return node;
  }
  const title = (text) => svg("title", {}, text);
  const byId = (id) => document.getElementById(id);
  function setText(id, text, value) {
    const node = byId(id);
    node.textContent = text;
    if (value !== undefined) node.dataset.value = String(value);
  }
  function fill(id, node) {
    byId(id).replaceChildren(node);
  }

  // Which bucket starts get a label on the time axis: round local times, about six of them.
  function ticks(starts, window) {
    const out = [];
    let days = 0;
    starts.forEach((t, i) => {
      const d = new Date(t * 1000);
      const prev = i > 0 ? new Date(starts[i - 1] * 1000) : null;
      const midnight = d.getHours() === 0 && d.getMinutes() === 0;
      const newDay = prev === null ? midnight : prev.getDate() !== d.getDate();
      if (window === "1h" && d.getMinutes() % 10 === 0) out.push([i, clock(d)]);
      else if (window === "24h" && d.getMinutes() === 0 && d.getHours() % 4 === 0) out.push([i, clock(d)]);
      else if (window === "7d" && newDay) out.push([i, day(d)]);
      else if (window === "30d" && newDay && days++ % 5 === 0) out.push([i, day(d)]);
    });
    return out;
  }

  function niceMax(value) {
    if (value <= 0) return 1;
    const power = Math.pow(10, Math.floor(Math.log10(value)));
    for (const step of [1, 2, 2.5, 5, 10]) if (value <= step * power) return step * power;
    return 10 * power;
  }

  // charts -----------------------------------------------------------------------------------

  const PLOT = { left: 52, right: 74, top: 10, bottom: 24, height: 220 };

  function timeAxis(root, data, x, bottom) {
    for (const [i, label] of ticks(data.series.start, data.window)) {
      const at = x(i);
      root.append(svg("line", { class: "gridline", x1: at, x2: at, y1: PLOT.top, y2: bottom }));
      root.append(svg("text", { x: at, y: bottom + 16, "text-anchor": "middle" }, label));
    }
  }

  function valueAxis(root, max, y, format) {
    for (const fraction of [0, 0.25, 0.5, 0.75, 1]) {
      const at = y(max * fraction);
      root.append(svg("line", { class: "gridline", x1: PLOT.left, x2: WIDTH - PLOT.right, y1: at, y2: at }));
      root.append(svg("text", { x: PLOT.left - 6, y: at + 4, "text-anchor": "end" }, format(max * fraction)));
    }
  }

  function hitChart(data) {
    const s = data.series;
    const count = s.start.length;
    const bottom = PLOT.height - PLOT.bottom;
    const plotH = bottom - PLOT.top;
    const step = (WIDTH - PLOT.left - PLOT.right) / count;
    const x = (i) => PLOT.left + i * step;
    const y = (rate) => bottom - rate * plotH;
    const root = svg("svg", {
      viewBox: `0 0 ${WIDTH} ${PLOT.height}`, role: "img", "data-testid": "chart-hits",
      "aria-label": `hit rate per ${bucketName(data.bucket_s)}`,
    });
    valueAxis(root, 1, y, (v) => Math.round(v * 100) + "%");
    timeAxis(root, data, x, bottom);
    const gap = step > 3 ? 1 : 0;
    for (let i = 0; i < count; i++) {
      const lookups = s.exact_hits[i] + s.semantic_hits[i] + s.misses[i];
      if (!lookups) continue;
      const exactH = (s.exact_hits[i] / lookups) * plotH;
      const semanticH = (s.semantic_hits[i] / lookups) * plotH;
      const group = svg("g", {
        class: "bucket", "data-start": s.start[i], "data-lookups": lookups,
        "data-exact": s.exact_hits[i], "data-semantic": s.semantic_hits[i], "data-misses": s.misses[i],
      });
      group.append(
        title(`${when(s.start[i])}: ${int(lookups)} lookups, ${int(s.exact_hits[i])} exact and ` +
              `${int(s.semantic_hits[i])} semantic hits (${pct(s.hit_rate[i])})`),
        svg("rect", { class: "hover", x: x(i), y: PLOT.top, width: step, height: plotH }),
        svg("rect", { class: "exact", x: x(i) + gap / 2, y: bottom - exactH, width: step - gap, height: exactH }),
        svg("rect", {
          class: "semantic", x: x(i) + gap / 2, y: bottom - exactH - semanticH,
          width: step - gap, height: semanticH,
        }),
      );
      root.append(group);
    }
    root.append(svg("line", { class: "axis", x1: PLOT.left, x2: WIDTH - PLOT.right, y1: bottom, y2: bottom }));
    const rate = data.totals.hit_rate;
    if (rate !== null) {
      root.append(svg("text", { x: WIDTH - PLOT.right + 6, y: y(rate) + 4, class: "name" }, "avg " + pct(rate)));
    }
    return root;
  }

  function usdChart(data) {
    const s = data.series;
    const count = s.start.length;
    const bottom = PLOT.height - PLOT.bottom;
    const plotH = bottom - PLOT.top;
    const step = (WIDTH - PLOT.left - PLOT.right) / count;
    const x = (i) => PLOT.left + i * step;
    const lines = [["saved", s.saved_usd], ["spent", s.spent_usd], ["warm", s.warm_usd]].map(
      ([name, values]) => {
        let total = 0;
        return [name, [0].concat(values.map((v) => (total += v)))];
      },
    );
    const max = niceMax(Math.max(...lines.map(([, cumulative]) => cumulative[count])));
    const y = (value) => bottom - (value / max) * plotH;
    const root = svg("svg", {
      viewBox: `0 0 ${WIDTH} ${PLOT.height}`, role: "img", "data-testid": "chart-usd",
      "aria-label": "cumulative USD saved and spent",
    });
    valueAxis(root, max, y, (v) => "$" + (max < 1 ? v.toFixed(3) : max < 10 ? v.toFixed(2) : int(v)));
    timeAxis(root, data, x, bottom);
    root.append(svg("line", { class: "axis", x1: PLOT.left, x2: WIDTH - PLOT.right, y1: bottom, y2: bottom }));
    const ends = [];
    for (const [name, cumulative] of lines) {
      const points = cumulative.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
      const total = cumulative[count];
      root.append(svg("polyline", {
        class: "line-" + name, points, "data-series": name, "data-total": total,
        "data-points": cumulative.length,
      }, title(`${name}: ${usd(total)} over the window`)));
      ends.push([name, total, y(total)]);
    }
    // End labels, pushed apart when the lines end close together.
    ends.sort((a, b) => a[2] - b[2]);
    let last = -Infinity;
    for (const [name, total, at] of ends) {
      const placed = Math.max(at + 4, last + 13);
      last = placed;
      root.append(svg("text", {
        x: WIDTH - PLOT.right + 6, y: placed, class: "end-" + name, "data-testid": "usd-end-" + name,
      }, usd(total)));
    }
    return root;
  }

  function tokenBars(lines, testid) {
    if (!lines.length) return el("p", { class: "empty" }, "no tokens in this window");
    const rowH = 34;
    const nameW = 150;
    const numberW = 120;
    const max = Math.max(1, ...lines.map((l) => Math.max(l.spent_tokens, l.saved_tokens)));
    const span = WIDTH - nameW - numberW - 8;
    const root = svg("svg", { viewBox: `0 0 ${WIDTH} ${lines.length * rowH + 4}`, role: "img", "data-testid": testid });
    lines.forEach((line, row) => {
      const top = row * rowH + 4;
      const spentW = (line.spent_tokens / max) * span;
      const savedW = (line.saved_tokens / max) * span;
      const name = line.name.length > 22 ? line.name.slice(0, 21) + "…" : line.name;
      root.append(svg("g", {
        class: "token-row", "data-name": line.name, "data-spent": line.spent_tokens, "data-saved": line.saved_tokens,
      },
      title(`${line.name}: ${int(line.spent_tokens)} tokens spent in ${int(line.calls)} calls (${usd(line.spent_usd)}), ` +
            `${int(line.saved_tokens)} saved by ${int(line.hits)} hits (${usd(line.saved_usd)})`),
      svg("text", { x: 0, y: top + 17, class: "name" }, name),
      svg("rect", { class: "bar-spent", x: nameW, y: top + 2, width: Math.max(spentW, line.spent_tokens ? 1 : 0), height: 12 }),
      svg("rect", { class: "bar-saved", x: nameW, y: top + 16, width: Math.max(savedW, line.saved_tokens ? 1 : 0), height: 12 }),
      svg("text", { x: nameW + spentW + 6, y: top + 12 }, line.spent_tokens ? compact(line.spent_tokens) : ""),
      svg("text", { x: nameW + savedW + 6, y: top + 26 }, line.saved_tokens ? compact(line.saved_tokens) : "")));
    });
    return root;
  }

  // tables -----------------------------------------------------------------------------------

  function rows(id, items, render, emptyText, columns) {
    const body = byId(id).tBodies[0];
    if (!items.length) {
      body.replaceChildren(el("tr", {}, el("td", { class: "empty", colspan: String(columns) }, emptyText)));
      return;
    }
    body.replaceChildren(...items.map(render));
  }

  function td(text, cls) {
    return el("td", cls ? { class: cls } : {}, text);
  }

  function draw(data) {
    const t = data.totals;
    setText("total-lookups", int(t.lookups), t.lookups);
    setText("total-hit-rate", pct(t.hit_rate), t.hit_rate === null ? "" : t.hit_rate);
    setText("total-exact", int(t.exact_hits), t.exact_hits);
    setText("total-semantic", int(t.semantic_hits), t.semantic_hits);
    setText("total-misses", int(t.misses), t.misses);
    setText("total-saved", usd(t.saved_usd), t.saved_usd);
    setText("total-spent", usd(t.spent_usd), t.spent_usd);
    setText("total-warm", usd(t.warm_usd), t.warm_usd);
    setText("total-tokens", compact(t.saved_tokens) + " / " + compact(t.spent_tokens + t.warm_tokens));
    for (const node of document.querySelectorAll(".bucket-name")) node.textContent = bucketName(data.bucket_s);

    fill("chart-hits", t.lookups ? hitChart(data) : el("p", { class: "empty" }, "no lookups in this window"));
    const spentAny = t.saved_usd + t.spent_usd + t.warm_usd > 0;
    fill("chart-usd", spentAny ? usdChart(data) : el("p", { class: "empty" }, "no spend or savings in this window"));
    fill("chart-endpoints", tokenBars(data.endpoints, "chart-endpoints"));
    fill("chart-models", tokenBars(data.models, "chart-models"));

    rows("sources", data.sources, (s) => el("tr", { class: s.name === "warm" ? "warm" : "", "data-source": s.name },
      td(s.name === "warm" ? "warm (warm-up)" : s.name), td(int(s.calls), "num"), td(int(s.hits), "num"),
      td(int(s.spent_tokens), "num"), td(usd(s.spent_usd), "num"), td(usd(s.saved_usd), "num")),
    "no calls or hits in this window", 6);

    rows("namespaces", data.namespaces, (n) => {
      const pick = el("button", { type: "button", class: "linklike" }, n.name);
      pick.addEventListener("click", () => choose(n.name, state.window));
      return el("tr", { class: n.name === data.namespace ? "selected" : "", "data-namespace": n.name },
        el("td", {}, pick), td(int(n.catalog_version), "num"), td(int(n.entries), "num"),
        td(int(n.lookups), "num"), td(pct(n.hit_rate), "num"), td(int(n.reported_wrong), "num"));
    }, "no namespace yet", 6);

    rows("top-entries", data.top_entries, (e) => {
      const question = td(e.question, "text");
      question.title = `${e.question}\n${e.namespace} · ${e.entry_id}`;
      return el("tr", { "data-entry": e.entry_id, "data-hits": e.hits },
        question, td(int(e.hits), "num"), td(when(e.last_hit), "time"));
    }, "no hits yet", 3);

    rows("wrong-hits", data.wrong_hits, (w) => {
      const asked = td(w.question, "text");
      asked.title = w.question;
      const served = td(w.entry_question === null ? "(entry no longer stored)" : w.entry_question, "text");
      served.title = `${w.entry_id} (${w.match} match)`;
      return el("tr", { "data-lookup": w.lookup_id }, td(when(w.ts), "time"), asked, served,
        td(w.similarity.toFixed(3), "num"));
    }, "no wrong hits reported", 4);
  }

  // controls ---------------------------------------------------------------------------------

  function showControls(data) {
    const select = byId("namespace");
    const names = data.namespaces.map((n) => n.name);
    if (state.namespace && !names.includes(state.namespace)) names.push(state.namespace);
    const options = [el("option", { value: "" }, "all namespaces")].concat(
      names.map((name) => el("option", { value: name }, name)));
    select.replaceChildren(...options);
    select.value = state.namespace;
    for (const button of document.querySelectorAll("[data-window]")) {
      button.setAttribute("aria-pressed", String(button.dataset.window === state.window));
    }
  }

  function choose(namespace, window) {
    state.namespace = namespace;
    state.window = window;
    const next = new URLSearchParams();
    if (state.key) next.set("key", state.key);
    if (namespace) next.set("ns", namespace);
    next.set("window", window);
    history.replaceState(null, "", "#" + next.toString());
    load(true);
  }

  function problem(text) {
    const node = byId("problem");
    node.hidden = !text;
    node.textContent = text || "";
  }

  async function load(force) {
    if (state.inFlight && !force) return;
    state.inFlight = true;
    const wanted = `${state.namespace}|${state.window}`;
    const query = new URLSearchParams({ window: state.window });
    if (state.namespace) query.set("namespace", state.namespace);
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), TIMEOUT_MS);
    try {
      const response = await fetch("/dashboard/data?" + query, {
        headers: state.key ? { "x-semcache-key": state.key } : {},
        signal: abort.signal,
        cache: "no-store",
      });
      if (response.status === 401 || response.status === 403) {
        problem("This server needs a client key for every namespace (\"*\"): open /dashboard#key=<key>.");
        document.body.dataset.state = "refused";
        return;
      }
      if (!response.ok) {
        const body = await response.json().catch(() => ({}));
        problem(`The server answered ${response.status}: ${body.detail || response.statusText}. Retrying.`);
        document.body.dataset.state = "error";
        return;
      }
      const data = await response.json();
      if (wanted !== `${state.namespace}|${state.window}`) return; // the user moved on meanwhile
      state.data = data;
      problem("");
      showControls(data);
      draw(data);
      byId("status").textContent = "updated " + new Date().toLocaleTimeString("en-GB") + " · every 10 s";
      document.body.dataset.shown = wanted;
      document.body.dataset.state = "ready";
    } catch (error) {
      problem("Cannot reach the server (" + (error.name === "AbortError" ? "timed out" : error.message) + "). Retrying.");
      document.body.dataset.state = "error";
    } finally {
      clearTimeout(timer);
      state.inFlight = false;
    }
  }

  function start() {
    byId("namespace").addEventListener("change", (event) => choose(event.target.value, state.window));
    for (const button of document.querySelectorAll("[data-window]")) {
      button.addEventListener("click", () => choose(state.namespace, button.dataset.window));
      button.setAttribute("aria-pressed", String(button.dataset.window === state.window));
    }
    load(true);
    setInterval(() => { if (!document.hidden) load(false); }, REFRESH_MS);
    document.addEventListener("visibilitychange", () => { if (!document.hidden) load(false); });
  }

  start();
})();
