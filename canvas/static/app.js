// The canvas page: plain JS, no build step. Every call sends the Supabase access token as a Bearer header; the
// token stays in this tab's sessionStorage only. User data is put into the page as text, never as HTML.
"use strict";

const TERMINAL = new Set(["SUCCEEDED", "FAILED", "CANCELLED"]);
const THUMB_SIZE = 128;
const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem("canvas.token") || "";
let polling = null;

function say(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function subjectOf(jwt) {
  try {
    const payload = jwt.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(payload)).sub || "?";
  } catch (e) {
    return "?";
  }
}

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${token}` };
  if (body !== undefined && !(body instanceof FormData)) headers["Content-Type"] = "application/json";
  const init = { method, headers };
  if (body !== undefined) init.body = body instanceof FormData ? body : JSON.stringify(body);
  const resp = await fetch(path, init);
  if (resp.status === 401) {
    signOut();
    throw new Error("the token was refused (401): sign in again");
  }
  if (resp.status === 204) return null;
  const data = await resp.json();
  if (!resp.ok) throw new Error(`${resp.status}: ${data.message || data.error}`);
  return data;
}

function el(tag, attrs = {}, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function renderTask(task) {
  const row = el("div", { class: "task", "data-status": task.status, "data-task": task.task_id || "" });
  row.append(el("span", {}, `${task.type} ${JSON.stringify(task.params)}: ${task.status}`));
  if (task.error) row.append(el("span", {}, ` (${task.error})`));
  for (const result of task.results || []) {
    if (result.name.endsWith(".png")) {
      row.append(el("img", { src: result.url, alt: result.name, class: "result" }));
    } else {
      const link = el("a", { href: result.url, target: "_blank", rel: "noopener" }, result.name);
      row.append(" ", link);
    }
  }
  return row;
}

async function renderTasks(image, box) {
  const { items } = await api("GET", `/images/${image.id}/tasks`);
  box.replaceChildren(...items.map(renderTask));
  return items.some((t) => !TERMINAL.has(t.status));
}

function renderImage(image) {
  const card = el("article", { class: "image", "data-id": image.id });
  card.append(el("img", { class: "thumb", src: image.url, alt: image.name }));
  const meta = `${image.name} · ${image.width}×${image.height} · ${image.bytes} bytes`;
  card.append(el("div", { class: "meta" }, meta));
  const run = el("button", { type: "button", class: "run-thumbnail" }, `Thumbnail ${THUMB_SIZE}px`);
  const drop = el("button", { type: "button", class: "delete" }, "Delete");
  const tasks = el("div", { class: "tasks" });
  run.addEventListener("click", async () => {
    try {
      await api("POST", `/images/${image.id}/tasks`, { type: "thumbnail", params: { size: THUMB_SIZE } });
      say("task submitted");
      await refresh();
    } catch (e) {
      say(e.message, true);
    }
  });
  drop.addEventListener("click", async () => {
    try {
      await api("DELETE", `/images/${image.id}`);
      say("deleted");
      await refresh();
    } catch (e) {
      say(e.message, true);
    }
  });
  card.append(run, drop, tasks);
  return { card, tasks };
}

async function refresh() {
  if (!token) return;
  const items = [];
  let cursor = null;
  do {
    const page = await api("GET", "/images?limit=100" + (cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""));
    items.push(...page.items);
    cursor = page.next_cursor;
  } while (cursor);
  const cards = items.map(renderImage);
  $("gallery").replaceChildren(...cards.map((c) => c.card));
  const busy = await Promise.all(items.map((image, i) => renderTasks(image, cards[i].tasks)));
  clearTimeout(polling);
  if (busy.some(Boolean)) polling = setTimeout(() => refresh().catch((e) => say(e.message, true)), 2000);
  if (!items.length) say("no images yet: upload one");
}

function showSignedIn() {
  const signedIn = Boolean(token);
  $("who").textContent = signedIn ? `user ${subjectOf(token)}` : "signed out";
  $("upload-box").hidden = !signedIn;
  $("signout").hidden = !signedIn;
  $("signin").hidden = signedIn;
  $("token").hidden = signedIn;
  $("token").labels[0].hidden = signedIn;
  if (signedIn) $("token").value = "";
}

function signOut() {
  token = "";
  sessionStorage.removeItem("canvas.token");
  $("gallery").replaceChildren();
  showSignedIn();
}

$("signin").addEventListener("click", async () => {
  token = $("token").value.trim();
  sessionStorage.setItem("canvas.token", token);
  showSignedIn();
  try {
    await refresh();
    say("signed in");
  } catch (e) {
    say(e.message, true);
  }
});

$("signout").addEventListener("click", signOut);

$("upload").addEventListener("click", async () => {
  const file = $("file").files[0];
  if (!file) return say("choose an image first", true);
  const form = new FormData();
  form.append("file", file, file.name);
  say(`uploading ${file.name}...`);
  try {
    const image = await api("POST", "/images", form);
    say(`uploaded ${image.name} (${image.width}×${image.height})`);
    $("file").value = "";
    await refresh();
  } catch (e) {
    say(e.message, true);
  }
});

showSignedIn();
refresh().catch((e) => say(e.message, true));
