// alice-gpu's pages: every action is a POST with the page's CSRF token; no inline script.
"use strict";

const csrf = document.querySelector("meta[name=csrf]").content;
const body = document.body;

function say(text, isError) {
  const status = document.getElementById("status");
  status.textContent = text;
  status.className = "status" + (isError ? " error" : "");
}

async function call(method, url, payload, isForm) {
  const options = { method, headers: { "X-CSRF-Token": csrf } };
  if (payload !== undefined) {
    if (isForm) {
      options.body = payload;
    } else {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(payload);
    }
  }
  const response = await fetch(url, options);
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) {
    throw new Error(answer.detail || answer.error || response.statusText);
  }
  return answer;
}

function bytes(n) {
  for (const unit of ["B", "KB", "MB", "GB"]) {
    if (n < 1000 || unit === "GB") return (unit === "B" ? n : n.toFixed(1)) + " " + unit;
    n /= 1000;
  }
  return n + " B";
}

// ---------------------------------------------------------------- an asset's tags
function tagsPage() {
  const id = body.dataset.asset;
  const form = document.getElementById("add-tag");
  if (!id) return;
  const send = async (change) => {
    try {
      await call("POST", `/api/assets/${id}/tags`, change);
      location.reload();
    } catch (err) { say(err.message, true); }
  };
  if (form) {
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      send({ add: [form.elements.tag.value] });
    });
  }
  document.querySelectorAll(".remove-tag").forEach((button) => {
    button.addEventListener("click", () => send({ remove: [button.dataset.tag] }));
  });
}

// ---------------------------------------------------------------- search by image
function tile(match) {
  const figure = document.createElement("figure");
  figure.className = "tile";
  const link = document.createElement("a");
  link.href = `/assets/${match.id}`;
  const img = document.createElement("img");
  img.src = `/api/assets/${match.id}/thumb`;
  img.alt = match.path;
  link.appendChild(img);
  const caption = document.createElement("figcaption");
  const name = document.createElement("span");
  name.className = "name";
  name.textContent = match.path.split("/").pop();
  name.title = match.path;
  const score = document.createElement("span");
  score.className = "extra";
  score.textContent = match.score.toFixed(3);
  caption.append(name, score);
  figure.append(link, caption);
  return figure;
}

function searchPage() {
  const drop = document.getElementById("drop");
  if (!drop) return;
  const input = document.getElementById("upload");
  const results = document.getElementById("results");
  const note = document.getElementById("search-note");
  const search = async (file) => {
    if (!file) return;
    note.textContent = `Searching for images like ${file.name || "the pasted image"}…`;
    results.replaceChildren();
    const form = new FormData();
    form.append("file", file, file.name || "pasted");
    try {
      const answer = await call("POST", "/api/search?k=24", form, true);
      note.textContent = `${answer.results.length} look-alikes, best first (by ${answer.by}).`;
      answer.results.forEach((m) => results.appendChild(tile(m)));
    } catch (err) { note.textContent = err.message; say(err.message, true); }
  };
  input.addEventListener("change", () => search(input.files[0]));
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    search(event.dataTransfer.files[0]);
  });
  document.addEventListener("paste", (event) => {
    const item = [...event.clipboardData.items].find((i) => i.type.startsWith("image/"));
    if (item) search(item.getAsFile());
  });
}

// ---------------------------------------------------------------- one group, keyboard first
function groupPage() {
  const gid = body.dataset.gid;
  if (!gid) return;
  const go = (other) => { if (other) location.href = `/duplicates/${other}`; };
  const next = () => {
    location.href = body.dataset.next ? `/duplicates/${body.dataset.next}` : "/duplicates";
  };
  const choose = async (id) => {
    try {
      await call("POST", `/api/groups/${gid}/keeper`, { keeper: Number(id) });
      document.querySelectorAll(".candidate").forEach((f) => {
        f.classList.toggle("keeper", f.dataset.id === String(id));
      });
      say("Keeper chosen; it stays chosen for this group.");
    } catch (err) { say(err.message, true); }
  };
  const keeper = () => document.querySelector(".candidate.keeper").dataset.id;
  const apart = async () => {
    try {
      await call("POST", `/api/groups/${gid}/not-duplicates`, {});
      say("Marked: not duplicates. It will not come back.");
      next();
    } catch (err) { say(err.message, true); }
  };
  const apply = async () => {
    try {
      const report = await call("POST", `/api/groups/${gid}/apply`, { keeper: Number(keeper()) });
      const problems = report.problems.length ? `, ${report.problems.length} left where they were` : "";
      say(`Set ${report.moved} files aside${problems}.`, report.problems.length > 0);
      next();
    } catch (err) { say(err.message, true); }
  };
  document.querySelectorAll(".choose").forEach((b) => b.addEventListener("click", () => choose(b.dataset.id)));
  const notDup = document.getElementById("not-duplicates");
  if (notDup) notDup.addEventListener("click", apart);
  const applyButton = document.getElementById("apply");
  if (applyButton) applyButton.addEventListener("click", apply);
  document.addEventListener("keydown", (event) => {
    if (event.target.closest("input, textarea, select") || event.ctrlKey || event.metaKey) return;
    if (event.key === "ArrowRight") go(body.dataset.next);
    else if (event.key === "ArrowLeft") go(body.dataset.prev);
    else if (!notDup) return;
    else if (/^[1-9]$/.test(event.key)) {
      const figure = document.querySelector(`.candidate[data-key="${event.key}"]`);
      if (figure) choose(figure.dataset.id);
    } else if (event.key === "n") apart();
    else if (event.key === "a") apply();
  });
}

// ---------------------------------------------------------------- bulk per tier, journals
function overviewPage() {
  document.querySelectorAll(".bulk").forEach((button) => {
    button.addEventListener("click", async () => {
      const tier = button.dataset.tier;
      try {
        const preview = await call("GET", `/api/groups-bulk?tier=${encodeURIComponent(tier)}`);
        const question = `Set aside ${preview.files} files from ${preview.groups} ${tier} groups ` +
          `(${bytes(preview.bytes)}), keeping each group's keeper?`;
        if (!window.confirm(question)) return;
        const report = await call("POST", "/api/groups-bulk", { tier });
        say(`Set ${report.moved} files aside.`);
        location.reload();
      } catch (err) { say(err.message, true); }
    });
  });
  const banner = document.getElementById("progress");
  if (banner) setTimeout(() => location.reload(), 3000);   // the groups are being computed
}

function journalsPage() {
  document.querySelectorAll(".undo").forEach((button) => {
    button.addEventListener("click", async () => {
      try {
        const report = await call("POST", `/api/journals/${encodeURIComponent(button.dataset.name)}/undo`, {});
        const problems = report.problems.length ? `; ${report.problems.length} not (see the journal)` : "";
        say(`Put back ${report.restored} files${problems}.`, report.problems.length > 0);
        setTimeout(() => location.reload(), 800);
      } catch (err) { say(err.message, true); }
    });
  });
}

tagsPage();
searchPage();
groupPage();
overviewPage();
journalsPage();
