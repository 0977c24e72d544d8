// The operator page of `detector serve`: score images through the API, show each verdict with its overlay and
// named defects, keep a tally. The threshold slider decides on this page only (score >= threshold, the rule of
// Detector.predict); "apply to the server" shows only when the server was started with --allow-threshold-change.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const state = { detectors: [], current: null, served: null, pageT: null, results: [] };

  function headers() {
    const key = sessionStorage.getItem("detector-api-key");
    return key ? { "X-API-Key": key } : {};
  }

  function say(text) { $("status").textContent = text || ""; }

  async function call(url, options) {
    const res = await fetch(url, Object.assign({}, options, { headers: Object.assign(headers(), (options || {}).headers) }));
    if (res.status === 401) {
      $("key-box").hidden = false;
      throw new Error("this server asks for an API key: type it in the box at the top");
    }
    if (!res.ok) {
      let detail = res.statusText;
      try { detail = (await res.json()).detail || detail; } catch (e) { /* not JSON */ }
      throw new Error(`${res.status}: ${detail}`);
    }
    return res;
  }

  const fmt = (v) => (v === null || v === undefined ? "none" : Number(v).toPrecision(4));

  function decide(score) {
    return state.pageT === null ? null : score >= state.pageT;
  }

  function render() {
    let passed = 0, rejected = 0;
    for (const r of state.results) {
      const bad = decide(r.score);
      r.card.classList.toggle("rejected", bad === true);
      r.card.classList.toggle("passed", bad === false);
      r.card.dataset.verdict = bad === null ? "none" : (bad ? "rejected" : "passed");
      const v = r.card.querySelector(".verdict");
      v.textContent = bad === null ? "no threshold" : (bad ? "REJECTED" : "passed");
      r.card.querySelector(".against").textContent = state.pageT === null
        ? `score ${fmt(r.score)}` : `score ${fmt(r.score)} ${bad ? ">=" : "<"} threshold ${fmt(state.pageT)}`;
      if (bad === true) rejected++; else if (bad === false) passed++;
    }
    for (const [id, n] of [["tally-passed", passed], ["tally-rejected", rejected]]) {
      $(id).textContent = String(n);
      $(id).dataset.count = String(n);
    }
    $("img-value").textContent = state.pageT === null ? "none" : String(state.pageT);
    $("no-threshold").hidden = state.served !== null;
  }

  function widen(score) {
    const s = $("img-thr");
    if (score < Number(s.min)) s.min = String(Math.floor(score));
    if (score > Number(s.max)) s.max = String(Math.ceil(score));
  }

  function setServed(value) {
    state.served = value === null || value === undefined ? null : Number(value);
    state.pageT = state.served;
    if (state.served !== null) { widen(state.served); $("img-thr").value = String(state.served); }
    render();
  }

  async function loadDetectors() {
    const data = await (await call("/v1/detectors")).json();
    state.detectors = data.detectors;
    const sel = $("detector");
    sel.innerHTML = "";
    for (const d of data.detectors) {
      const o = document.createElement("option");
      o.value = d.name;
      o.textContent = `${d.name} (${d["class"]})`;
      sel.appendChild(o);
    }
    $("watch").hidden = !data.watch;
    pick(sel.value);
    if (data.watch) await loadWatch();
  }

  function pick(name) {
    const d = state.detectors.find((x) => x.name === name);
    state.current = d;
    if (!d) return;
    $("detector-info").textContent = `${d.backbone}, ${d.shots} shot(s), ${d.engine}, resolution ${d.resolution}`;
    $("thr-apply").hidden = !d.threshold_change;
    $("thr-note").textContent = d.threshold_change
      ? "Moving it changes this page's decisions; 'apply to the server' changes the served detector's."
      : "Moving it changes this page's decisions only, not the served detector.";
    setServed(d.thresholds_in_force.image);
  }

  function card(item, file) {
    const c = document.createElement("div");
    c.className = "result";
    c.dataset.score = String(item.score);
    c.dataset.name = file;
    c.dataset.served = String(item.anomalous);
    const title = document.createElement("div");
    title.innerHTML = '<span class="verdict"></span> <span class="against"></span>';
    const name = document.createElement("div");
    name.className = "name";
    name.textContent = file;
    c.append(title, name);
    if (item.overlay_png) {
      const img = document.createElement("img");
      img.alt = `overlay of ${file}`;
      img.src = "data:image/png;base64," + item.overlay_png;
      c.appendChild(img);
    }
    const list = document.createElement("ol");
    list.className = "defects";
    for (const d of item.defects || []) {
      const li = document.createElement("li");
      li.className = "defect";
      li.dataset.component = d.component;
      li.textContent = d.sentence;
      list.appendChild(li);
    }
    if (item.defects && item.defects.length === 0) {
      const li = document.createElement("li");
      li.className = "no-defect";
      li.textContent = "no defect region at the pixel threshold";
      list.appendChild(li);
    }
    c.appendChild(list);
    return c;
  }

  async function score(blobs) {
    if (!state.current) { say("no detector is served"); return; }
    say("");
    const form = new FormData();
    for (const [name, blob] of blobs) form.append("image", blob, name);
    try {
      const url = `/v1/detectors/${encodeURIComponent(state.current.name)}/predict?overlay=true`;
      const data = await (await call(url, { method: "POST", body: form })).json();
      for (const item of data.images) {
        const c = card(item, item.name);
        $("results").prepend(c);
        widen(item.score);
        state.results.push({ score: item.score, card: c });
      }
      render();
    } catch (e) { say(String(e.message || e)); }
  }

  async function loadWatch() {
    try {
      const data = await (await call("/v1/watch")).json();
      const ul = $("watch-list");
      ul.innerHTML = "";
      for (const name of data.images) {
        const li = document.createElement("li");
        const b = document.createElement("button");
        b.type = "button";
        b.textContent = name;
        b.addEventListener("click", async () => {
          try {
            const blob = await (await call(`/v1/watch/${encodeURIComponent(name)}`)).blob();
            await score([[name, blob]]);
          } catch (e) { say(String(e.message || e)); }
        });
        li.appendChild(b);
        ul.appendChild(li);
      }
    } catch (e) { say(String(e.message || e)); }
  }

  $("files").addEventListener("change", (ev) => {
    score(Array.from(ev.target.files).map((f) => [f.name, f]));
    ev.target.value = "";
  });
  const drop = $("drop");
  drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (ev) => {
    ev.preventDefault();
    drop.classList.remove("over");
    score(Array.from(ev.dataTransfer.files).map((f) => [f.name, f]));
  });
  $("img-thr").addEventListener("input", (ev) => { state.pageT = Number(ev.target.value); render(); });
  $("thr-reset").addEventListener("click", () => setServed(state.served));
  $("thr-apply").addEventListener("click", async () => {
    try {
      const res = await call(`/v1/detectors/${encodeURIComponent(state.current.name)}/thresholds`, {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ image: state.pageT }) });
      const data = await res.json();
      state.current.thresholds_in_force = data.thresholds_in_force;
      setServed(data.thresholds_in_force.image);
      say(`served image threshold now ${fmt(data.thresholds_in_force.image)}`);
    } catch (e) { say(String(e.message || e)); }
  });
  $("detector").addEventListener("change", (ev) => pick(ev.target.value));
  $("clear").addEventListener("click", () => { state.results = []; $("results").innerHTML = ""; render(); });
  $("watch-refresh").addEventListener("click", loadWatch);
  $("apikey").addEventListener("change", (ev) => {
    sessionStorage.setItem("detector-api-key", ev.target.value);
    loadDetectors().catch((e) => say(String(e.message || e)));
  });
  loadDetectors().catch((e) => say(String(e.message || e)));
})();
