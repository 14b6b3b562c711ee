// The timeline component (see mmsa_ray/timeline.py): a Vega-Lite spec made by altair,
// filled with rows here. Needs the Vega bundle (window.vegaEmbed) and the spec element
// #mmsa-timeline-spec on the page.
(function () {
  "use strict";
  const SPEC = JSON.parse(document.getElementById("mmsa-timeline-spec").textContent);
  const COLOURS = {};  // "emotion:joy" -> colour, from the spec's own scales
  SPEC.vconcat.forEach(function (v) {
    const sc = v.encoding.color.scale;
    sc.domain.forEach(function (c, j) { COLOURS[v.encoding.color.field + ":" + c] = sc.range[j]; });
  });
  window.mmsaColour = function (field, value) { return COLOURS[field + ":" + value] || "#777"; };
  // one colour per speaker name, the same on every page and file (a hash into Tableau 10)
  const SPEAKER_COLOURS = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1",
                           "#ff9da7", "#9c755f", "#bab0ac"];
  window.mmsaSpeakerColour = function (name) {
    let h = 0;
    for (let k = 0; k < name.length; k++) h = (h * 31 + name.charCodeAt(k)) >>> 0;
    return SPEAKER_COLOURS[h % SPEAKER_COLOURS.length];
  };
  const top = (probs) => (probs && probs.length ? Math.max.apply(null, probs) : null);
  const faceCount = (r) => (r.face_count != null ? r.face_count : typeof r.faces === "number" ? r.faces : null);

  // A label row (report row or the API's JSON) -> a timeline row (fields in timeline.py).
  window.mmsaTimelineRow = function (r, i) {
    const failed = !!r.error || r.emotion === "failed";
    // no label, by design: none of the checkpoint's modalities had a signal (no_label_reason)
    const nosignal = !failed && (!r.emotion || r.emotion === "no signal");
    const unlabeled = failed || nosignal;
    const ec = unlabeled ? 1 : (r.ec != null ? r.ec : top(r.emotion_probs));
    const sc = unlabeled ? 1 : (r.sc != null ? r.sc : top(r.sentiment_probs));
    const t0 = r.t0 != null ? r.t0 : (r.start || 0);
    let t1 = r.t1 != null ? r.t1 : r.end;
    if (t1 == null || !(t1 > t0)) t1 = t0 + 1;
    const faces = faceCount(r);
    return {
      i: r.i != null ? r.i : i, t0: t0, t1: t1,
      emotion: failed ? "failed" : nosignal ? "no signal" : r.emotion, ec: ec,
      sentiment: failed ? "failed" : nosignal ? "no signal" : r.sentiment, sc: sc,
      label: failed ? "failed: " + (r.error || "no prediction")
        : nosignal ? "no signal: " + (r.no_label_reason || "nothing to read")
        : r.emotion + " " + (ec == null ? "" : ec.toFixed(2)) + " · " + r.sentiment,
      transcript: r.transcript || r.text || "",
      text_emotion: r.text_emotion || "absent", audio_emotion: r.audio_emotion || "absent",
      video_emotion: r.video_emotion || "absent",
      speaker: r.who || r.speaker || null,
      // report rows carry faces as a count; the API's rows as face_count (and faces: the tracks)
      faces: faces,
      face: faces == null ? null : faces === 0 ? "no face" : (r.face_emotion || r.face || null),
      spc: r.spc != null ? r.spc : (r.speaker_confidence != null ? r.speaker_confidence : 1),
    };
  };

  // Draw `rows` (timeline rows) into `el`; opts.onSelect(i) on a click on a mark.
  // Resolves to the Vega view. SVG up to 2000 rows (one <path> per mark), canvas beyond.
  window.mmsaTimeline = function (el, rows, opts) {
    opts = opts || {};
    const spec = JSON.parse(JSON.stringify(SPEC));
    if (rows.some(function (r) { return r.face != null; })) {  // a lane above the labels: the main face's expression
      spec.vconcat.unshift(spec.usermeta.face_strip);
    }
    const speakers = Array.from(new Set(rows.map(function (r) { return r.speaker; }).filter(Boolean))).sort();
    if (speakers.length) {  // a lane on top: who speaks when
      const strip = spec.usermeta.speaker_strip;
      strip.encoding.color.scale = { domain: speakers, range: speakers.map(window.mmsaSpeakerColour) };
      spec.vconcat.unshift(strip);
    }
    const width = Math.max(160, (el.clientWidth || 640) - 20);
    spec.vconcat.forEach(function (v) { v.width = width; });
    spec.datasets = Object.assign({}, spec.datasets || {});
    spec.datasets.rows = rows;
    if (el._mmsaView) { el._mmsaView.finalize(); el._mmsaView = null; }
    const renderer = opts.renderer || (rows.length > 2000 ? "canvas" : "svg");
    return vegaEmbed(el, spec, { actions: false, renderer: renderer }).then(function (res) {
      el._mmsaView = res.view;
      el.dataset.marks = String(rows.length);
      res.view.addEventListener("click", function (event, item) {
        if (item && item.datum && item.datum.i != null && opts.onSelect) opts.onSelect(item.datum.i);
      });
      return res.view;
    });
  };
})();
