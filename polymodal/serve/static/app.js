// polymodal web page: builds the form from GET /schema, posts multipart to /predict and /search,
// and voices generated captions through POST /speak.
// Plain JS, no build step. Untrusted strings are only ever set through textContent.
"use strict";

const $ = (id) => document.getElementById(id);

function el(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "text") node.textContent = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.appendChild(c);
  return node;
}

function showError(box, message) {
  box.textContent = message;
  box.hidden = !message;
}

async function errorText(resp) {
  try {
    const body = await resp.json();
    if (typeof body.detail === "string") return body.detail;
    return JSON.stringify(body.detail ?? body);
  } catch (_) {
    return `HTTP ${resp.status}`;
  }
}

function fieldFor(input) {
  const id = `f-${input.name}`;
  const label = el("label", { for: id, text: `${input.name} ` }, [el("span", { class: "hint", text: `(${input.modality})` })]);
  const wrap = el("div", { class: "field" }, [label]);
  if (input.input === "file") {
    const file = el("input", { type: "file", id, name: input.name, accept: input.accept });
    wrap.appendChild(file);
    const preview = el(input.modality === "image" ? "img" : "audio", { class: "preview", hidden: "" });
    if (input.modality === "audio") preview.setAttribute("controls", "");
    if (input.modality === "image") preview.setAttribute("alt", `${input.name} preview`);
    wrap.appendChild(preview);
    file.addEventListener("change", () => {
      if (preview.src) URL.revokeObjectURL(preview.src);
      if (file.files.length) {
        preview.src = URL.createObjectURL(file.files[0]);
        preview.hidden = false;
      } else {
        preview.removeAttribute("src");
        preview.hidden = true;
      }
    });
  } else if (input.input === "number") {
    wrap.appendChild(el("input", { type: "number", step: "any", id, name: input.name }));
  } else {
    const attrs = { type: "text", id, name: input.name };
    if (input.choices) {
      attrs.list = `${id}-choices`;
      wrap.appendChild(el("datalist", { id: attrs.list }, input.choices.map((c) => el("option", { value: c }))));
    }
    wrap.appendChild(el("input", attrs));
  }
  return wrap;
}

function formBody(form) {
  // Only filled-in fields are sent: an empty field is a missing modality, not an empty value.
  const body = new FormData();
  for (const node of form.querySelectorAll("input[name]")) {
    if (node.type === "file") {
      if (node.files.length) body.append(node.name, node.files[0]);
    } else if (node.value.trim() !== "") {
      body.append(node.name, node.value);
    }
  }
  return body;
}

function showPrediction(out) {
  const pred = out.prediction;  // a multi-task model answers one prediction per label
  $("prediction").textContent = pred !== null && typeof pred === "object"
    ? Object.entries(pred).map(([k, v]) => `${k}: ${v}`).join(" · ") : String(pred);
  $("latency").textContent = `(${out.latency_ms.toFixed(1)} ms)`;
  // A generated text (caption / vqa-open run) can be voiced by POST /speak when a TTS engine is installed.
  $("speak").hidden = !(speakReady && typeof pred === "string" && pred.trim() !== "");
  $("speech").hidden = true;
  const list = $("probabilities");
  list.replaceChildren();
  const probs = Object.entries(out.probabilities || {}).sort((a, b) => b[1] - a[1]);
  for (const [cls, p] of probs) {
    const bar = el("div", { class: "bar" }, [el("span", { style: `width:${(100 * p).toFixed(1)}%` })]);
    list.appendChild(el("li", { dataset: { cls } }, [el("span", { text: cls }), bar,
      el("span", { text: `${(100 * p).toFixed(1)}%` })]));
  }
  $("result").hidden = false;
}

let speakReady = false;

async function speakPrediction() {
  showError($("error"), "");
  $("speak").disabled = true;
  try {
    const r = await fetch("/speak", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ text: $("prediction").textContent }) });
    if (!r.ok) {
      showError($("error"), await errorText(r));
      return;
    }
    const audio = $("speech");
    if (audio.src) URL.revokeObjectURL(audio.src);
    audio.src = URL.createObjectURL(await r.blob());
    audio.hidden = false;
    audio.play().catch(() => {});  // autoplay may be refused; the controls are there
  } catch (e) {
    showError($("error"), `request failed: ${e}`);
  } finally {
    $("speak").disabled = false;
  }
}

function safeImageSrc(src) {
  return typeof src === "string" && (/^data:image\//.test(src) || /^https?:\/\//.test(src) || src.startsWith("/"));
}

function showResults(results) {
  const box = $("search-results");
  box.replaceChildren();
  for (const r of results) {
    const fig = el("figure");
    if (safeImageSrc(r.thumbnail)) fig.appendChild(el("img", { src: r.thumbnail, alt: String(r.id) }));
    const caption = r.caption ? `${r.caption} ` : "";
    fig.appendChild(el("figcaption", { text: `${caption}#${r.id} · ${Number(r.score).toFixed(3)}` }));
    box.appendChild(fig);
  }
  if (!results.length) box.appendChild(el("p", { text: "no results" }));
}

async function init() {
  const resp = await fetch("/schema");
  if (!resp.ok) {
    showError($("error"), `cannot read the model schema: ${await errorText(resp)}`);
    return;
  }
  const schema = await resp.json();
  if (schema.label) {
    const classes = schema.classes.length ? ` into ${schema.classes.length} classes` : "";
    $("model-info").textContent = `Predicts “${schema.label}” (${schema.problem_type})${classes}. ` +
      "Fill in any inputs you have; missing ones are allowed.";
    $("fields").replaceChildren(...schema.inputs.map(fieldFor));
    if (schema.problem_type === "generation") {  // caption runs: a "Speak" button once an engine is there
      const s = await fetch("/speak").catch(() => null);
      speakReady = Boolean(s && s.ok && (await s.json()).default);
      $("speak").addEventListener("click", speakPrediction);
    }
    $("predict").disabled = false;

    $("predict-form").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      showError($("error"), "");
      $("predict").disabled = true;
      try {
        const r = await fetch("/predict", { method: "POST", body: formBody(ev.target) });
        if (r.ok) showPrediction(await r.json());
        else showError($("error"), await errorText(r));
      } catch (e) {
        showError($("error"), `request failed: ${e}`);
      } finally {
        $("predict").disabled = false;
      }
    });
  } else {  // a search-only server (an alignment run's gallery index)
    $("model-info").textContent = `Searches a gallery by ${schema.search.modalities.join(", ")}.`;
    $("predict-panel").hidden = true;
    $("search-panel").hidden = false;
  }

  if (schema.search) {
    $("tabs").hidden = !schema.label;
    for (const kind of ["text", "image", "audio"]) {
      $(`search-${kind}-label`).hidden = !schema.search.modalities.includes(kind);
    }
    for (const tab of document.querySelectorAll(".tab")) {
      tab.addEventListener("click", () => {
        for (const t of document.querySelectorAll(".tab")) t.classList.toggle("active", t === tab);
        for (const p of document.querySelectorAll(".panel")) p.hidden = p.id !== tab.dataset.tab;
      });
    }
    $("search-form").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      showError($("search-error"), "");
      try {
        const r = await fetch("/search", { method: "POST", body: formBody(ev.target) });
        if (r.ok) showResults((await r.json()).results);
        else showError($("search-error"), await errorText(r));
      } catch (e) {
        showError($("search-error"), `request failed: ${e}`);
      }
    });
  }
}

init();
