// "Try it": send the text to the depot's own inference API and draw the answer.
// Everything is built with DOM calls and textContent: no answer is ever parsed as HTML.
(function () {
  "use strict";
  var form = document.getElementById("try-form");
  if (!form) return;
  var out = document.getElementById("try-answer");

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function bars(items, labelOf) {
    var box = el("div", "bars");
    items.forEach(function (it) {
      var row = el("div", "bar");
      row.appendChild(el("span", "label", labelOf(it)));
      var fill = el("span", "fill");
      fill.style.width = Math.max(2, Math.round((it.score || 0) * 300)) + "px";
      row.appendChild(fill);
      row.appendChild(el("span", "score", (it.score || 0).toFixed(4)));
      box.appendChild(row);
    });
    return box;
  }
  function entities(text, ents) {
    var p = el("p", "entities"), at = 0;
    ents.slice().sort(function (a, b) { return a.start - b.start; }).forEach(function (e) {
      if (typeof e.start !== "number" || e.start < at) return;
      p.appendChild(document.createTextNode(text.slice(at, e.start)));
      var m = el("mark", "entity", text.slice(e.start, e.end));
      m.appendChild(el("sup", "", e.entity_group || e.entity || ""));
      m.title = (e.score || 0).toFixed(4);
      p.appendChild(m);
      at = e.end;
    });
    p.appendChild(document.createTextNode(text.slice(at)));
    return p;
  }
  function draw(task, text, answer) {
    out.textContent = "";
    var a = answer;
    while (Array.isArray(a) && a.length === 1 && Array.isArray(a[0])) a = a[0];
    if (task === "token-classification") { out.appendChild(entities(text, a)); return; }
    if (Array.isArray(a) && a.length && a[0] && typeof a[0].score === "number") {
      out.appendChild(bars(a, function (x) { return x.label || x.token_str || x.answer || ""; }));
      return;
    }
    if (a && !Array.isArray(a) && typeof a.score === "number") {
      out.appendChild(bars([a], function (x) { return x.answer || x.label || ""; }));
      return;
    }
    var first = Array.isArray(a) ? a[0] : a;
    if (first && typeof first === "object") {
      var t = first.generated_text || first.summary_text || first.translation_text;
      if (t !== undefined) { out.appendChild(el("div", "generated", t)); return; }
    }
    if (Array.isArray(a) && typeof a[0] === "number") {
      out.appendChild(el("p", "", a.length + "-dimensional embedding: [" +
        a.slice(0, 8).map(function (v) { return v.toFixed(4); }).join(", ") + ", ...]"));
      return;
    }
    out.appendChild(el("pre", "", JSON.stringify(answer, null, 2)));
  }
  form.addEventListener("submit", function (ev) {
    ev.preventDefault();
    var task = form.dataset.task, text = document.getElementById("try-input").value;
    var inputs = text;
    if (task === "question-answering") {
      var parts = text.split("\n");
      inputs = { question: parts[0], context: parts.slice(1).join("\n") || parts[0] };
    }
    out.textContent = "running…";
    fetch("/models/" + form.dataset.model, {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "Accept": "application/json" },
      body: JSON.stringify({ inputs: inputs })
    }).then(function (r) {
      return r.json().then(function (body) { return { ok: r.ok, body: body }; });
    }).then(function (res) {
      if (!res.ok) { out.textContent = ""; out.appendChild(el("p", "error", res.body.error || "failed")); return; }
      draw(task, text, res.body);
    }).catch(function (e) { out.textContent = ""; out.appendChild(el("p", "error", String(e))); });
  });
})();
