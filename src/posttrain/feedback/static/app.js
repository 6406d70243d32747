// posttrain ranking page. Every piece of task text is inserted with textContent: never as HTML.
"use strict";
(function () {
  const params = new URLSearchParams(location.search);
  const token = params.get("token") || sessionStorage.getItem("posttrain-token") || "";
  if (params.get("token")) {
    sessionStorage.setItem("posttrain-token", token);
    history.replaceState(null, "", location.pathname); // keep the token out of the address bar
  }
  const CRITERIA = [["helpful", "h"], ["honest", "o"], ["harmless", "a"]];
  let task = null;
  let selected = 0;
  let started = 0;
  const $ = (id) => document.getElementById(id);

  async function api(path, body) {
    const opts = { headers: { Authorization: "Bearer " + token } };
    if (body !== undefined) {
      opts.method = "POST";
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    const res = await fetch(path, opts);
    const data = await res.json();
    if (!res.ok) throw new Error(data.error || res.statusText);
    return data;
  }

  function showProgress(p) {
    $("progress").textContent = `done ${p.done} · remaining ${p.remaining}`;
  }

  function items() { return Array.from($("responses").children); }

  function select(i) {
    const li = items();
    if (!li.length) return;
    selected = Math.max(0, Math.min(li.length - 1, i));
    li.forEach((el, j) => el.classList.toggle("selected", j === selected));
  }

  function move(delta) {
    const li = items();
    const j = selected + delta;
    if (j < 0 || j >= li.length) return;
    const list = $("responses");
    if (delta < 0) list.insertBefore(li[selected], li[j]);
    else list.insertBefore(li[j], li[selected]);
    select(j);
  }

  function toggle(name) {
    const el = items()[selected];
    if (!el) return;
    if (name === "flag") { el.classList.toggle("flagged"); el.querySelector("input.flag").checked = el.classList.contains("flagged"); return; }
    const box = el.querySelector(`input[data-criterion="${name}"]`);
    box.checked = !box.checked;
  }

  function responseItem(r) {
    const li = document.createElement("li");
    li.dataset.index = String(r.index);
    li.draggable = true;
    const text = document.createElement("div");
    text.className = "text";
    text.textContent = r.text;
    li.appendChild(text);
    const marks = document.createElement("div");
    marks.className = "marks";
    for (const [name] of CRITERIA.concat([["flag"]])) {
      const label = document.createElement("label");
      const box = document.createElement("input");
      box.type = "checkbox";
      if (name === "flag") { box.className = "flag"; box.addEventListener("change", () => li.classList.toggle("flagged", box.checked)); }
      else box.dataset.criterion = name;
      label.appendChild(box);
      label.appendChild(document.createTextNode(" " + name));
      marks.appendChild(label);
    }
    li.appendChild(marks);
    li.addEventListener("click", () => select(items().indexOf(li)));
    li.addEventListener("dragstart", (e) => { e.dataTransfer.setData("text/plain", li.dataset.index); li.classList.add("dragging"); });
    li.addEventListener("dragend", () => li.classList.remove("dragging"));
    li.addEventListener("dragover", (e) => e.preventDefault());
    li.addEventListener("drop", (e) => {
      e.preventDefault();
      const from = items().find((el) => el.dataset.index === e.dataTransfer.getData("text/plain"));
      if (from && from !== li) $("responses").insertBefore(from, li);
      select(items().indexOf(from));
    });
    return li;
  }

  function render(data) {
    showProgress(data.progress);
    task = data.task;
    $("status").textContent = "";
    if (!task) { $("task").hidden = true; $("empty").hidden = false; return; }
    $("empty").hidden = true;
    $("task").hidden = false;
    const prompt = $("prompt");
    prompt.replaceChildren();
    for (const m of task.prompt) {
      const div = document.createElement("div");
      div.className = "msg";
      const role = document.createElement("div");
      role.className = "role";
      role.textContent = m.role;
      const body = document.createElement("div");
      body.textContent = m.content;
      div.append(role, body);
      prompt.appendChild(div);
    }
    $("responses").replaceChildren(...task.responses.map(responseItem));
    $("comment").value = "";
    select(0);
    started = Date.now();
  }

  async function next() {
    try { render(await api("/api/next")); }
    catch (e) { $("progress").textContent = "error: " + e.message; $("empty-text").textContent = e.message; $("empty").hidden = false; }
  }

  async function submit() {
    if (!task) return;
    const li = items();
    const criteria = {};
    const flags = [];
    for (const el of li) {
      const idx = Number(el.dataset.index);
      criteria[idx] = {};
      for (const [name] of CRITERIA) criteria[idx][name] = el.querySelector(`input[data-criterion="${name}"]`).checked;
      if (el.querySelector("input.flag").checked) flags.push(idx);
    }
    const body = { task_id: task.id, ranking: li.map((el) => Number(el.dataset.index)), criteria, flags,
                   comment: $("comment").value, seconds: (Date.now() - started) / 1000 };
    try { await api("/api/judgement", body); $("status").textContent = "saved"; await next(); }
    catch (e) { $("status").textContent = "not saved: " + e.message; }
  }

  document.addEventListener("keydown", (e) => {
    if (e.target.tagName === "TEXTAREA") return;
    const key = e.key;
    if (key === "Enter") { e.preventDefault(); submit(); return; }
    if (key === "ArrowUp" || key === "k") { e.preventDefault(); e.shiftKey ? move(-1) : select(selected - 1); return; }
    if (key === "ArrowDown" || key === "j") { e.preventDefault(); e.shiftKey ? move(1) : select(selected + 1); return; }
    if (key === "u") return move(-1);
    if (key === "d") return move(1);
    if (key === "f") return toggle("flag");
    for (const [name, k] of CRITERIA) if (key === k) return toggle(name);
    if (/^[1-9]$/.test(key)) select(Number(key) - 1);
  });
  $("submit").addEventListener("click", submit);
  next();
})();
