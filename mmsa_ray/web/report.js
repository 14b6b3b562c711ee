// The report page (mmsa_ray/report.py): summary charts, then paginated file views, each
// with a player, a timeline (web/timeline.js) and its transcript lines; filters and sorting.
(function () {
  "use strict";
  const D = JSON.parse(document.getElementById("mmsa-data").textContent);
  const CHARTS = JSON.parse(document.getElementById("mmsa-charts").textContent);
  const LINES_PER_PAGE = 50;
  Object.keys(CHARTS).forEach(function (id) {
    vegaEmbed("#" + id, CHARTS[id], { actions: false, renderer: "svg" }).catch(function (e) { console.error(e); });
  });

  const files = D.files, rows = D.rows;
  const byFile = files.map(function () { return []; });
  rows.forEach(function (r) { byFile[r.f].push(r); });
  const $ = function (id) { return document.getElementById(id); };
  const state = { emotion: "", sentiment: "", minConf: 0, file: "", speaker: "", text: "", hideUncertain: false, sortFiles: "name", sortRows: "time", page: 0, linePage: {} };

  const fileSelect = $("f-file");
  files.forEach(function (f) {
    const o = document.createElement("option");
    o.value = String(f.k); o.textContent = f.name + " (" + f.rows + ")";
    fileSelect.appendChild(o);
  });

  const speakerSelect = $("f-speaker");
  Array.from(new Set(rows.map(function (r) { return r.who; }).filter(Boolean))).sort().forEach(function (w) {
    const o = document.createElement("option");
    o.value = w; o.textContent = w;
    speakerSelect.appendChild(o);
  });
  speakerSelect.parentNode.hidden = speakerSelect.options.length < 2;

  function el(tag, attrs, children) {
    const e = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === "text") e.textContent = attrs[k];
      else if (k === "class") e.className = attrs[k];
      else e.setAttribute(k, attrs[k]);
    });
    (children || []).forEach(function (c) { if (c) e.appendChild(c); });
    return e;
  }
  function fmtTime(s) {
    const m = Math.floor(s / 60), r = s - 60 * m;
    return m + ":" + (r < 10 ? "0" : "") + r.toFixed(1);
  }
  function matches(r) {
    if (state.emotion && r.emotion !== state.emotion) return false;
    if (state.sentiment && r.sentiment !== state.sentiment) return false;
    if (state.speaker && r.who !== state.speaker) return false;
    if (state.minConf > 0 && !(r.ec != null && r.ec >= state.minConf)) return false;
    // uncertain: a calibrated top probability below the checkpoint's threshold (either head)
    if (state.hideUncertain && (r.eu || r.su)) return false;
    if (state.text) {
      const hay = ((r.transcript || "") + " " + r.id + " " + (r.error || "")).toLowerCase();
      if (hay.indexOf(state.text) < 0) return false;
    }
    return true;
  }
  function sortRows(list) {
    const by = state.sortRows, out = list.slice();
    if (by === "conf-desc") out.sort(function (a, b) { return (b.ec == null ? -1 : b.ec) - (a.ec == null ? -1 : a.ec) || a.t0 - b.t0; });
    else if (by === "conf-asc") out.sort(function (a, b) { return (a.ec == null ? 2 : a.ec) - (b.ec == null ? 2 : b.ec) || a.t0 - b.t0; });
    else if (by === "emotion") out.sort(function (a, b) { return a.emotion < b.emotion ? -1 : a.emotion > b.emotion ? 1 : a.t0 - b.t0; });
    return out;
  }
  function meanConf(list) {
    const c = list.filter(function (r) { return r.ec != null; });
    return c.length ? c.reduce(function (s, r) { return s + r.ec; }, 0) / c.length : 2;
  }

  function pager(nav, pages, current, onPick) {
    nav.innerHTML = "";
    if (pages <= 1) return;
    const add = function (label, p, cur) {
      const b = el("button", { type: "button", text: label });
      if (cur) b.setAttribute("aria-current", "true");
      if (p < 0 || p >= pages) b.disabled = true;
      b.addEventListener("click", function () { onPick(p); });
      nav.appendChild(b);
    };
    add("‹", current - 1, false);
    const shown = new Set([0, pages - 1]);
    for (let p = current - 2; p <= current + 2; p++) if (p >= 0 && p < pages) shown.add(p);
    let last = -1;
    Array.from(shown).sort(function (a, b) { return a - b; }).forEach(function (p) {
      if (p > last + 1) nav.appendChild(el("span", { text: "…" }));
      add(String(p + 1), p, p === current);
      last = p;
    });
    add("›", current + 1, false);
    nav.appendChild(el("span", { class: "conf", text: " page " + (current + 1) + " of " + pages }));
  }

  function line(r, onPick) {
    const chip = function (field, value) {
      return el("span", { class: "chip", style: "background:" + mmsaColour(field, value), text: value });
    };
    const li = el("li", { "data-i": String(r.i), "data-t0": String(r.t0), title: r.id }, [
      el("span", { class: "time", text: fmtTime(r.t0) + "–" + fmtTime(r.t1) }),
      r.who ? el("span", { class: "who", style: "border-color:" + mmsaSpeakerColour(r.who), text: r.who }) : null,
      chip("emotion", r.emotion),
      r.ec != null ? el("span", { class: "conf", text: r.ec.toFixed(2) }) : null,
      r.error || r.emotion === "no signal" ? null : chip("sentiment", r.sentiment),
      r.no_label_reason ? el("span", { class: "conf", text: r.no_label_reason }) : null,
      r.driver ? el("span", { class: "conf driver", text: "from " + r.driver }) : null,
      r.face ? el("span", { class: "conf face", text: "face " + r.face + (r.faces > 1 ? " (" + r.faces + " faces)" : "") }) : null,
      r.faces === 0 ? el("span", { class: "conf face", text: "no face" }) : null,
      r.thumbs ? el("span", { class: "thumbs" }, r.thumbs.map(function (src, k) {
        return el("img", { src: src, alt: k ? "face " + (k + 1) : "main face", title: k ? "face " + (k + 1) : "main face" });
      })) : null,
      r.fused ? el("span", { class: "conf fused", text: "fused " + r.fused }) : null,
      r.sc != null ? el("span", { class: "conf", text: r.sc.toFixed(2) }) : null,
      r.eu || r.su ? el("span", { class: "conf", text: "uncertain" }) : null,
      r.asr != null ? el("span", { class: "conf", text: "ASR " + r.asr.toFixed(2) }) : null,
      r.speech === "none" ? el("span", { class: "conf", text: "no speech found" }) : null,
      r.speech === "unrecognized" ? el("span", { class: "conf", text: "speech not recognized" }) : null,
      r.unreliable ? el("span", { class: "conf", text: "transcript unreliable" }) : null,
      r.no_speech != null ? el("span", { class: "conf", text: "no speech " + r.no_speech.toFixed(2) }) : null,
      r.error ? el("span", { class: "err", text: r.error }) : null,
      r.transcript ? el("span", { class: "transcript", text: r.transcript }) : null,
    ]);
    if (!r.error) {
      const det = el("details", { class: "modal" }, [el("summary", { text: "each modality" })]);
      det.addEventListener("toggle", function () {
        if (det.querySelector("table")) return;  // built on first open: 10,000 rows stay cheap
        const table = el("table");
        ["text", "audio", "video"].forEach(function (m) {
          const present = r.modalities.indexOf(m) >= 0;
          table.appendChild(el("tr", {}, [el("td", { text: m }), el("td", { text: present ? (r[m + "_emotion"] || "–") : "absent" })]));
        });
        if (r.ep) table.appendChild(el("tr", {}, [el("td", { text: "emotion p" }),
          el("td", { text: D.emotions.map(function (e, j) { return e + " " + r.ep[j].toFixed(2); }).join(", ") })]));
        if (r.sp) table.appendChild(el("tr", {}, [el("td", { text: "sentiment p" }),
          el("td", { text: D.sentiments.map(function (e, j) { return e + " " + r.sp[j].toFixed(2); }).join(", ") })]));
        det.appendChild(table);
      });
      det.addEventListener("click", function (ev) { ev.stopPropagation(); });
      li.appendChild(det);
    }
    li.addEventListener("click", function () { onPick(r.i); });
    return li;
  }

  function fileView(f, list) {
    const section = el("section", { class: "file", id: "file-" + f.k, "data-file": f.name });
    const failed = list.filter(function (r) { return r.error; }).length;
    section.appendChild(el("h3", { text: f.name }));
    section.appendChild(el("div", { class: "file-meta",
      text: list.length + " of " + f.rows + " rows shown" + (failed ? " · " + failed + " failed" : "") +
        (f.duration != null ? " · " + fmtTime(f.duration) : "") + " · " + f.uri }));
    const left = el("div", { class: "left" }), right = el("div", { class: "right" });
    section.appendChild(el("div", { class: "file-body" }, [left, right]));
    let player = null;
    if (f.media) {
      player = el(f.kind === "audio" ? "audio" : "video", { controls: "", preload: "metadata", src: f.media, class: "player-media" });
      if (f.track) player.appendChild(el("track", { kind: "subtitles", label: "labels", srclang: "en", src: f.track, default: "" }));
      player.addEventListener("error", function () {
        left.insertBefore(el("p", { class: "no-player", text: "This browser cannot play " + f.media + "." }), timelineDiv);
      });
      left.appendChild(el("div", { class: "player" }, [player]));
    } else {
      left.appendChild(el("p", { class: "no-player", text: f.failed === f.rows
        ? "No player: the file could not be decoded." : "No player: the media is not reachable from this page (" + f.uri + ")." }));
    }
    const timelineDiv = el("div", { class: "timeline" });
    left.appendChild(timelineDiv);
    const ol = el("ol", { class: "lines" }), nav = el("nav", { class: "pager" });
    right.appendChild(ol); right.appendChild(nav);
    const sorted = sortRows(list);
    const pages = Math.ceil(sorted.length / LINES_PER_PAGE);

    function select(i) {
      const r = rows[i];
      const at = sorted.indexOf(r);
      const page = Math.floor(at / LINES_PER_PAGE);
      if (page !== (state.linePage[f.k] || 0)) { state.linePage[f.k] = page; drawLines(); }
      ol.querySelectorAll("li.selected").forEach(function (x) { x.classList.remove("selected"); });
      const li = ol.querySelector('li[data-i="' + i + '"]');
      if (li) { li.classList.add("selected"); li.scrollIntoView({ block: "nearest" }); }
      if (player) { player.currentTime = r.t0; }
    }
    function drawLines() {
      const p = Math.min(state.linePage[f.k] || 0, Math.max(0, pages - 1));
      ol.innerHTML = "";
      sorted.slice(p * LINES_PER_PAGE, (p + 1) * LINES_PER_PAGE).forEach(function (r) { ol.appendChild(line(r, select)); });
      pager(nav, pages, p, function (q) { state.linePage[f.k] = q; drawLines(); });
    }
    drawLines();
    if (player) {
      player.addEventListener("timeupdate", function () {
        const t = player.currentTime;
        ol.querySelectorAll("li").forEach(function (li) {
          const r = rows[+li.dataset.i];
          li.classList.toggle("playing", r.t0 <= t && t < r.t1);
        });
      });
    }
    section._draw = function () {
      return mmsaTimeline(timelineDiv, list.map(mmsaTimelineRow), { onSelect: select })
        .catch(function (e) { console.error(e); });
    };
    return section;
  }

  function render() {
    let visible = files.map(function (f) { return { f: f, list: byFile[f.k].filter(matches) }; })
      .filter(function (x) { return x.list.length && (state.file === "" || String(x.f.k) === state.file); });
    const by = state.sortFiles;
    if (by === "rows") visible.sort(function (a, b) { return b.list.length - a.list.length; });
    else if (by === "failed") visible.sort(function (a, b) { return b.f.failed - a.f.failed; });
    else if (by === "conf") visible.sort(function (a, b) { return meanConf(a.list) - meanConf(b.list); });
    const nRows = visible.reduce(function (s, x) { return s + x.list.length; }, 0);
    $("match-count").textContent = nRows + " of " + rows.length + " rows in " + visible.length + " of " + files.length + " files match";
    const per = D.files_per_page, pages = Math.max(1, Math.ceil(visible.length / per));
    state.page = Math.min(state.page, pages - 1);
    const pick = function (p) { state.page = p; render(); $("files-section").scrollIntoView(); };
    pager($("files-pager"), pages, state.page, pick);
    pager($("files-pager-bottom"), pages, state.page, pick);
    const box = $("files");
    box.querySelectorAll(".timeline").forEach(function (t) { if (t._mmsaView) t._mmsaView.finalize(); });
    box.innerHTML = "";
    const sections = visible.slice(state.page * per, (state.page + 1) * per).map(function (x) { return fileView(x.f, x.list); });
    sections.forEach(function (s) { box.appendChild(s); });
    // after layout: the timelines take their width from their container
    window.mmsaReportReady = Promise.all(sections.map(function (s) { return s._draw(); }));
  }

  let timer = null;
  function update(key, value, debounce) {
    state[key] = value; state.page = 0; state.linePage = {};
    clearTimeout(timer);
    timer = setTimeout(render, debounce ? 150 : 0);
  }
  $("f-emotion").addEventListener("change", function (e) { update("emotion", e.target.value); });
  $("f-sentiment").addEventListener("change", function (e) { update("sentiment", e.target.value); });
  $("f-conf").addEventListener("input", function (e) {
    $("f-conf-value").textContent = (+e.target.value).toFixed(2); update("minConf", +e.target.value, true);
  });
  $("f-file").addEventListener("change", function (e) { update("file", e.target.value); });
  $("f-speaker").addEventListener("change", function (e) { update("speaker", e.target.value); });
  $("f-uncertain").addEventListener("change", function (e) { update("hideUncertain", e.target.checked); });
  $("f-text").addEventListener("input", function (e) { update("text", e.target.value.trim().toLowerCase(), true); });
  $("f-sort-files").addEventListener("change", function (e) { update("sortFiles", e.target.value); });
  $("f-sort-rows").addEventListener("change", function (e) { update("sortRows", e.target.value); });
  $("f-reset").addEventListener("click", function () {
    ["f-emotion", "f-sentiment", "f-file", "f-speaker", "f-text"].forEach(function (id) { $(id).value = ""; });
    $("f-conf").value = 0; $("f-conf-value").textContent = "0.00"; $("f-uncertain").checked = false;
    $("f-sort-files").value = "name"; $("f-sort-rows").value = "time";
    Object.assign(state, { emotion: "", sentiment: "", minConf: 0, file: "", speaker: "", text: "", hideUncertain: false, sortFiles: "name", sortRows: "time", page: 0, linePage: {} });
    render();
  });
  render();
})();
