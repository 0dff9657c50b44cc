// The playground page: a user, their conversations, and lines with a live preview.
// API data is only ever put in the page as text (textContent, option values), never as HTML.

import {
  ApiError, call, clearSession, followEvents, listAll, loadSession, newestPage, olderPage,
  saveSession,
} from "./api.js";
import {showArt} from "./art.js";

const PAGE_SIZE = 10;
const REFRESH_MS = 2000; // the conditional GET, only while the event stream is not live
const STREAM_RETRY_MS = 3000; // until the stream's own retry: hint arrives
const PREVIEW_DELAY_MS = 250;

const $ = (id) => document.getElementById(id);

const state = {
  session: null,
  conversations: [], // shown, newest first
  hasOlder: false,
  open: null, // {id, heading, etag, lines}
  timer: null,
  live: null, // the open conversation's event stream: {controller, lastId, retry, timer}
  renderAvailable: true,
  previewTimer: null,
  previewSeq: 0,
};

// --- status and errors ---------------------------------------------------------------
function announce(message) {
  $("status").textContent = message;
}

function showError(error) {
  const box = $("error");
  box.textContent = error instanceof ApiError ? error.message : String(error && error.message);
  box.hidden = false;
}

function clearError() {
  $("error").textContent = "";
  $("error").hidden = true;
}

// Runs an action from a control: its errors are shown, never thrown into the console.
async function act(action) {
  clearError();
  try {
    await action();
  } catch (error) {
    if (error instanceof ApiError && error.code === "auth_invalid") {
      forgetLocally();
      announce("This user no longer exists; create a new one.");
    }
    showError(error);
  }
}

function api(method, path, options = {}) {
  return call(method, path, {...options, token: state.session && state.session.token});
}

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  return node;
}

function when(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : date.toLocaleString();
}

// --- session ---------------------------------------------------------------------------
function showSignedIn() {
  const signedIn = state.session !== null;
  $("signin").hidden = signedIn;
  $("session").hidden = !signedIn;
  $("workspace").hidden = !signedIn;
  if (signedIn) {
    const {id, name} = state.session;
    $("session-user").textContent = name ? `${name} (${id})` : id;
  }
}

function forgetLocally() {
  clearSession();
  state.session = null;
  closeConversation();
  state.conversations = [];
  renderConversationList();
  showSignedIn();
}

async function createUser(event) {
  event.preventDefault();
  const name = $("user-name").value.trim();
  const {body} = await call("POST", "users", {body: name ? {name} : {}});
  state.session = {id: body.id, name: body.name, token: body.token};
  saveSession(state.session);
  $("user-name").value = "";
  showSignedIn();
  announce(`Created user ${body.id}.`);
  await start();
  $("new-heading").focus();
}

async function forgetMe() {
  const {id} = state.session;
  await api("DELETE", `users/${encodeURIComponent(id)}`);
  forgetLocally();
  announce(`Deleted user ${id} and everything they owned; this tab forgot the token.`);
  $("user-name").focus();
}

// --- conversations ---------------------------------------------------------------------
function renderConversationList() {
  const list = $("conversation-list");
  list.replaceChildren();
  for (const conversation of state.conversations) {
    const item = element("li");
    const button = element("button", conversation.heading, "link");
    button.type = "button";
    button.dataset.id = conversation.id;
    if (state.open && state.open.id === conversation.id) button.setAttribute("aria-current", "true");
    button.addEventListener("click", () => act(() => openConversation(conversation.id)));
    item.append(button, element("span", ` ${when(conversation.created_at)}`, "meta"));
    list.append(item);
  }
  $("no-conversations").hidden = state.conversations.length > 0;
  $("older").hidden = !state.hasOlder;
}

async function loadConversations() {
  const {items, hasOlder} = await newestPage("conversations", state.session.token, PAGE_SIZE);
  state.conversations = items;
  state.hasOlder = hasOlder;
  renderConversationList();
}

async function loadOlder() {
  const oldest = state.conversations[state.conversations.length - 1];
  const {items, hasOlder} = await olderPage("conversations", state.session.token, oldest.id,
                                            PAGE_SIZE);
  state.conversations = state.conversations.concat(items);
  state.hasOlder = hasOlder;
  renderConversationList();
  announce(`Showing ${state.conversations.length} conversations.`);
  const buttons = $("conversation-list").querySelectorAll("button");
  const first = buttons[buttons.length - items.length];
  if (first) first.focus();
}

async function createConversation(event) {
  event.preventDefault();
  const heading = $("new-heading").value;
  const {body} = await api("POST", "conversations", {body: {heading}});
  $("new-heading").value = "";
  state.conversations.unshift(body);
  renderConversationList();
  announce(`Created conversation “${body.heading}”.`);
  await openConversation(body.id);
}

async function openConversation(id) {
  stopRefresh();
  state.open = {id, heading: "", etag: null, lines: []};
  $("conversation").hidden = false;
  await refreshConversation();
  if (!state.open) return;
  renderConversationList();
  $("conversation-title").focus();
  schedulePreview();
  scheduleRefresh(); // until the stream is live
  startLive(state.open, null);
}

function closeConversation() {
  stopLive();
  stopRefresh();
  state.open = null;
  $("conversation").hidden = true;
  renderConversationList();
}

// A conditional GET: an unchanged conversation costs a 304 and no redraw.
async function refreshConversation() {
  const open = state.open;
  let result;
  try {
    result = await api("GET", `conversations/${encodeURIComponent(open.id)}`, {etag: open.etag});
  } catch (error) {
    if (error instanceof ApiError && error.status === 404 && state.open === open) {
      dropConversation(open.id);
      announce("This conversation was deleted.");
      return;
    }
    throw error;
  }
  if (state.open !== open || result.status === 304) return;
  open.etag = result.etag;
  open.heading = result.body.heading;
  open.lines = result.body.lines;
  renderConversation();
  const listed = state.conversations.find((c) => c.id === open.id);
  if (listed && listed.heading !== open.heading) {
    listed.heading = open.heading;
    renderConversationList();
  }
}

function renderConversation() {
  const open = state.open;
  $("conversation-title").textContent = open.heading;
  const list = $("lines");
  list.replaceChildren();
  for (const line of open.lines) {
    const item = element("li", undefined, "line");
    item.dataset.id = line.id;
    const art = element("pre", undefined, "art");
    showArt(art, line.output);
    art.tabIndex = 0;
    art.setAttribute("aria-label", `${line.animal} ${line.think ? "thinks" : "says"}: ${line.text}`);
    const meta = element("p", `${line.animal}, ${line.mood}, ${line.think ? "thought" : "said"}`
                              + ` ${when(line.created_at)}`, "meta");
    const remove = element("button", "Delete line", "danger");
    remove.type = "button";
    remove.setAttribute("aria-label", `Delete line: ${line.text || "(empty)"}`);
    remove.addEventListener("click", () => act(() => deleteLine(line.id)));
    item.append(art, meta, remove);
    list.append(item);
  }
  $("no-lines").hidden = open.lines.length > 0;
}

// --- live: the conversation's event stream, the conditional refresh as its fallback ------
function startLive(open, lastId) {
  stopLive();
  const live = {controller: new AbortController(), lastId, retry: STREAM_RETRY_MS, timer: null};
  state.live = live;
  const current = () => state.live === live && state.open === open;
  followEvents(`events/stream?conversation=${encodeURIComponent(open.id)}`, {
    token: state.session.token, lastId, signal: live.controller.signal,
    onOpen: () => {
      if (!current()) return;
      stopRefresh();
      $("conversation").dataset.live = "stream";
      refreshConversation().catch(showError); // what changed before the stream began
    },
    onMessage: (message) => {
      if (current()) applyEvent(open, live, message);
    },
  }).catch(() => null).then(() => {
    if (!current()) return;
    // The stream ended (SayPI serves one for a while only) or failed: poll until it is back.
    $("conversation").dataset.live = "polling";
    scheduleRefresh();
    live.timer = setTimeout(() => {
      if (current()) startLive(open, live.lastId);
    }, live.retry);
  });
}

function stopLive() {
  const live = state.live;
  state.live = null;
  if (live === null) return;
  live.controller.abort();
  if (live.timer !== null) clearTimeout(live.timer);
  delete $("conversation").dataset.live;
}

// One event of the open conversation, applied to what the page shows.
function applyEvent(open, live, message) {
  if (message.retry) live.retry = message.retry;
  if (message.id) live.lastId = message.id;
  if (!message.event) return;
  if (message.event === "reset") {
    open.etag = null;
    refreshConversation().catch(showError);
    return;
  }
  const object = message.data.data.object;
  if (message.event === "line.created") {
    if (!open.lines.some((line) => line.id === object.id)) open.lines.push(object);
  } else if (message.event === "line.deleted") {
    open.lines = open.lines.filter((line) => line.id !== object.id);
  } else if (message.event === "conversation.updated") {
    open.heading = object.heading;
    const listed = state.conversations.find((c) => c.id === open.id);
    if (listed) {
      listed.heading = object.heading;
      renderConversationList();
    }
  } else if (message.event === "conversation.deleted") {
    dropConversation(open.id);
    announce("This conversation was deleted.");
    return;
  }
  open.etag = null; // the page is past its last GET: the next refresh reads it whole
  renderConversation();
}

function scheduleRefresh() {
  stopRefresh();
  state.timer = setTimeout(async () => {
    if (!state.open) return;
    try {
      await refreshConversation();
    } catch (error) {
      showError(error);
    }
    if (state.open) scheduleRefresh();
  }, REFRESH_MS);
}

function stopRefresh() {
  if (state.timer !== null) clearTimeout(state.timer);
  state.timer = null;
}

async function renameConversation(event) {
  event.preventDefault();
  const heading = $("rename-heading").value;
  const {body} = await api("PATCH", `conversations/${encodeURIComponent(state.open.id)}`,
                           {body: {heading}});
  $("rename-heading").value = "";
  state.open.heading = body.heading;
  $("conversation-title").textContent = body.heading;
  const listed = state.conversations.find((c) => c.id === body.id);
  if (listed) listed.heading = body.heading;
  renderConversationList();
  announce(`Renamed the conversation to “${body.heading}”.`);
}

function dropConversation(id) {
  state.conversations = state.conversations.filter((c) => c.id !== id);
  closeConversation();
}

async function deleteConversation() {
  const {id, heading} = state.open;
  await api("DELETE", `conversations/${encodeURIComponent(id)}`);
  dropConversation(id);
  announce(`Deleted conversation “${heading}”.`);
  $("conversations-title").focus();
}

// --- lines -----------------------------------------------------------------------------
function lineParams() {
  return {text: $("text").value, animal: $("animal").value || "default",
          mood: $("mood").value || "default", think: $("think").checked};
}

async function addLine(event) {
  event.preventDefault();
  const params = lineParams();
  const {body} = await api("POST", `conversations/${encodeURIComponent(state.open.id)}/lines`,
                           {body: params});
  $("text").value = "";
  schedulePreview();
  await refreshConversation();
  announce(`The ${body.animal} ${body.think ? "thought" : "said"} it.`);
  $("text").focus();
}

async function deleteLine(lineId) {
  const open = state.open;
  await api("DELETE",
            `conversations/${encodeURIComponent(open.id)}/lines/${encodeURIComponent(lineId)}`);
  await refreshConversation();
  announce("Deleted the line.");
  $("text").focus();
}

// --- preview: POST /render, debounced; hidden when the API has no /render -------------------
function schedulePreview() {
  $("add-line").textContent = $("think").checked ? "Think it" : "Say it";
  if (!state.renderAvailable || !state.open) return;
  clearTimeout(state.previewTimer);
  state.previewTimer = setTimeout(updatePreview, PREVIEW_DELAY_MS);
}

async function updatePreview() {
  const seq = ++state.previewSeq;
  const preview = $("preview");
  try {
    const {body} = await api("POST", "render", {body: lineParams()});
    if (seq !== state.previewSeq) return;
    showArt(preview, body.output);
    preview.classList.remove("stale");
  } catch (error) {
    if (seq !== state.previewSeq) return;
    if (error instanceof ApiError && (error.status === 404 || error.status === 405)) {
      state.renderAvailable = false; // this SayPI has no POST /render
      $("preview-box").hidden = true;
      return;
    }
    preview.classList.add("stale");
    preview.textContent = error.message;
  }
}

// --- animals and moods ------------------------------------------------------------------
function fillSelect(select, options, keep) {
  select.replaceChildren();
  for (const [value, label] of options) {
    const option = element("option", label);
    option.value = value;
    select.append(option);
  }
  const values = options.map(([value]) => value);
  select.value = values.includes(keep) ? keep : (values.includes("default") ? "default" : values[0]);
}

async function loadAnimals() {
  const {body} = await api("GET", "animals");
  fillSelect($("animal"), body.animals.map((name) => [name, name]), $("animal").value);
}

async function loadMoods(select) {
  const moods = await listAll("moods", state.session.token, (mood) => mood.name);
  fillSelect($("mood"), moods.map((m) => [m.name,
    `${m.name} (${m.eyes}${m.user_defined ? ", yours" : ""})`]), select ?? $("mood").value);
}

async function saveMood(event) {
  event.preventDefault();
  const name = $("mood-name").value;
  const {status, body} = await api("PUT", `moods/${encodeURIComponent(name)}`,
                                   {body: {eyes: $("mood-eyes").value,
                                           tongue: $("mood-tongue").value}});
  await loadMoods(body.name);
  $("mood-name").value = "";
  announce(`${status === 201 ? "Created" : "Updated"} mood ${body.name}; it is selected.`);
  schedulePreview();
  $("mood").focus();
}

// --- start -------------------------------------------------------------------------------
async function start() {
  state.renderAvailable = true;
  $("preview-box").hidden = false;
  await Promise.all([loadAnimals(), loadMoods(), loadConversations()]);
}

function wire() {
  const on = (id, type, handler) => $(id).addEventListener(type, (event) => act(() => handler(event)));
  on("signin-form", "submit", createUser);
  on("forget", "click", forgetMe);
  on("new-conversation-form", "submit", createConversation);
  on("older", "click", loadOlder);
  on("rename-form", "submit", renameConversation);
  on("delete-conversation", "click", deleteConversation);
  on("close-conversation", "click", async () => {
    closeConversation();
    $("conversations-title").focus();
  });
  on("line-form", "submit", addLine);
  on("mood-form", "submit", saveMood);
  for (const id of ["text", "animal", "mood", "think"]) {
    $(id).addEventListener(id === "text" ? "input" : "change", schedulePreview);
  }
}

wire();
state.session = loadSession();
showSignedIn();
if (state.session) {
  act(async () => {
    await start();
    announce("Welcome back.");
  });
} else {
  announce("Create a user to start.");
}
