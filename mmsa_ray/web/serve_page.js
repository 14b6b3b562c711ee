// The Serve page (mmsa_ray/serve_page.py): upload -> POST v1/predict -> timeline,
// per-modality predictions, probabilities; API errors shown with their own message.
(function () {
  "use strict";
  const API = document.body.dataset.api;
  const PROBS_SPEC = JSON.parse(document.getElementById("mmsa-probs-spec").textContent);
  const EMOTIONS = ["anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"];
  const SENTIMENTS = ["negative", "neutral", "positive"];
  const WHAT = {
    400: "The upload was malformed", 404: "The API was not found", 413: "The file is too large for this server",
    415: "This is not a video or audio file the server accepts", 422: "The server could not use this file",
    500: "The server failed", 503: "The server is busy or a worker is unavailable: try again in a moment",
    504: "The server took too long",
  };
  const $ = function (id) { return document.getElementById(id); };
  let objectUrl = null;

  function el(tag, attrs, children) {
    const e = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === "text") e.textContent = attrs[k]; else if (k === "class") e.className = attrs[k]; else e.setAttribute(k, attrs[k]);
    });
    (children || []).forEach(function (c) { if (c) e.appendChild(c); });
    return e;
  }
  function fmtTime(s) { const m = Math.floor(s / 60), r = s - 60 * m; return m + ":" + (r < 10 ? "0" : "") + r.toFixed(1); }
  function chip(field, value) { return el("span", { class: "chip", style: "background:" + mmsaColour(field, value), text: value }); }
  function faceNote(r) {  // the main face's expression beside the label: its own opinion, never fused into it
    if (r.face_emotion) return el("span", { class: "conf face", text: "face " + r.face_emotion + (r.face_count > 1 ? " (" + r.face_count + " faces)" : "") + (r.fused_emotion ? " · fused " + r.fused_emotion : "") });
    return r.face_count === 0 ? el("span", { class: "conf face", text: "no face" }) : null;
  }
  function top(p) { return p && p.length ? Math.max.apply(null, p) : null; }

  function showError(status, message) {
    const box = $("error");
    box.innerHTML = "";
    box.appendChild(el("strong", { text: (status ? "HTTP " + status + " · " : "") + (WHAT[status] || "The request failed") }));
    box.appendChild(el("p", { text: message }));
    box.hidden = false;
    document.body.dataset.state = "error";
  }

  function mediaDuration(media) {
    return new Promise(function (resolve) {
      if (media.readyState >= 1) return resolve(media.duration);
      const done = function () { resolve(isFinite(media.duration) ? media.duration : null); };
      media.addEventListener("loadedmetadata", done, { once: true });
      media.addEventListener("error", function () { resolve(null); }, { once: true });
      setTimeout(function () { resolve(null); }, 5000);
    });
  }

  async function show(body, file, transcript, seconds) {
    $("status").textContent = "Done in " + seconds.toFixed(1) + " s.";
    const player = $("player");
    player.innerHTML = "";
    if (objectUrl) URL.revokeObjectURL(objectUrl);
    objectUrl = URL.createObjectURL(file);
    const media = el((file.type || "").indexOf("audio/") === 0 ? "audio" : "video", { controls: "", preload: "metadata", src: objectUrl });
    player.appendChild(media);
    const duration = await mediaDuration(media);
    const utterances = Array.isArray(body.utterances) ? body.utterances : [];
    const rows = utterances.length
      ? utterances.map(function (u, i) { return Object.assign({}, u, { i: i, transcript: u.transcript || u.text || "" }); })
      : [Object.assign({}, body, { i: 0, start: body.start || 0, end: body.end || duration || 1,
                                   transcript: body.transcript || transcript || "" })];
    const ec = top(body.emotion_probs), sc = top(body.sentiment_probs);
    const head = $("result-head");
    head.innerHTML = "";
    const whole = mmsaTimelineRow(body, 0);  // "no signal" when none of the model's inputs was there
    [el("span", { text: (body.source || file.name) + ": " }), chip("emotion", whole.emotion),
     el("span", { class: "conf", text: ec == null ? "" : ec.toFixed(2) }),
     body.no_label_reason ? el("span", { class: "conf", text: body.no_label_reason })
       : chip("sentiment", whole.sentiment),
     el("span", { class: "conf", text: sc == null ? "" : sc.toFixed(2) }),
     faceNote(body),
     el("span", { class: "conf", text: "· modalities " + (body.modalities || []).join("+") +
       (utterances.length ? " · " + utterances.length + " utterances" : "") + " · model " + (body.model_id || "?") }),
     // speech recognition ran (no transcript given) but found nothing, or could not read the audio
     body.speech_error ? el("span", { class: "conf", text: " · speech recognition: " + body.speech_error })
       : (Array.isArray(body.utterances) && !utterances.length ? el("span", { class: "conf", text: " · no speech found" }) : null),
    ].forEach(function (x) { if (x) head.appendChild(x); });

    const tbody = $("modalities").querySelector("tbody");
    tbody.innerHTML = "";
    ["text", "audio", "video"].forEach(function (m) {
      const present = (body.modalities || []).indexOf(m) >= 0;
      const v = body[m + "_emotion"];
      tbody.appendChild(el("tr", { "data-modality": m }, [el("td", { text: m }),
        el("td", {}, [present && v ? chip("emotion", v) : el("span", { class: "conf", text: "absent" })])]));
    });

    const probs = [];
    (body.emotion_probs || []).forEach(function (p, j) { probs.push({ head: "emotion", cls: EMOTIONS[j], p: p }); });
    (body.sentiment_probs || []).forEach(function (p, j) { probs.push({ head: "sentiment", cls: SENTIMENTS[j], p: p }); });
    const spec = JSON.parse(JSON.stringify(PROBS_SPEC));
    spec.datasets = Object.assign({}, spec.datasets || {}, { probs: probs });

    const lines = $("lines");
    lines.innerHTML = "";
    function seek(i) {
      media.currentTime = rows[i].start || 0;
      lines.querySelectorAll("li").forEach(function (li) { li.classList.toggle("selected", +li.dataset.i === i); });
    }
    rows.forEach(function (r) {
      const t = mmsaTimelineRow(r, r.i);
      const li = el("li", { "data-i": String(r.i) }, [
        el("span", { class: "time", text: fmtTime(t.t0) + "–" + fmtTime(t.t1) }), chip("emotion", t.emotion),
        el("span", { class: "conf", text: t.ec == null ? "" : t.ec.toFixed(2) }), chip("sentiment", t.sentiment),
        el("span", { class: "conf", text: t.sc == null ? "" : t.sc.toFixed(2) }),
        r.emotion_uncertain || r.sentiment_uncertain ? el("span", { class: "conf", text: "uncertain" }) : null,
        r.asr_confidence != null ? el("span", { class: "conf", text: "ASR " + r.asr_confidence.toFixed(2) }) : null,
        faceNote(r),
        r.error ? el("span", { class: "err", text: r.error }) : null,
        r.no_label_reason ? el("span", { class: "conf", text: r.no_label_reason }) : null,
        t.transcript ? el("span", { class: "transcript", text: t.transcript }) : null]);
      li.addEventListener("click", function () { seek(r.i); });
      lines.appendChild(li);
    });
    $("result").hidden = false;
    await Promise.all([
      mmsaTimeline($("timeline"), rows.map(mmsaTimelineRow), { onSelect: seek }),
      vegaEmbed("#probs", spec, { actions: false, renderer: "svg" }),
    ]);
    document.body.dataset.state = "done";
  }

  $("upload").addEventListener("submit", async function (ev) {
    ev.preventDefault();
    const file = $("file").files[0];
    if (!file) return;
    $("error").hidden = true;
    $("result").hidden = true;
    $("submit").disabled = true;
    document.body.dataset.state = "busy";
    $("status").textContent = "Uploading " + file.name + " (" + (file.size / 1048576).toFixed(1) + " MB) and analysing…";
    const form = new FormData();
    form.append("file", file, file.name);
    const transcript = $("transcript").value.trim();
    if (transcript) form.append("transcript", transcript);
    const t0 = performance.now();
    try {
      let resp;
      try {
        resp = await fetch(API, { method: "POST", body: form });
      } catch (e) {
        $("status").textContent = "";
        return showError(0, "Could not reach the server: " + e.message);
      }
      const text = await resp.text();
      let body = null;
      try { body = JSON.parse(text); } catch (e) { body = null; }
      if (!resp.ok) {
        $("status").textContent = "";
        return showError(resp.status, body && body.error ? body.error : text.slice(0, 300) || resp.statusText);
      }
      await show(body, file, transcript, (performance.now() - t0) / 1000);
    } catch (e) {
      console.error(e);
      showError(0, "The page failed to show the result: " + e.message);
    } finally {
      $("submit").disabled = false;
    }
  });
})();
