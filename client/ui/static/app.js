// The search page: asks /api/search, shows moments, plays the chosen one from its start. No outside resources.
"use strict";
const $ = (id) => document.getElementById(id);
const form = $("search"), box = $("q"), count = $("top"), results = $("results"), player = $("player");
let moment = null; // {video, start, end} being shown

const seconds = (s) => `${s.toFixed(1)} s`;
const fileName = (path) => path.split("/").pop();
const api = (path, params) => `${path}?${new URLSearchParams(params)}`;

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

async function getJson(url) {
  let response;
  try {
    response = await fetch(url, {headers: {Accept: "application/json"}});
  } catch (err) {
    throw new Error("The search service does not answer; is `s3d-client ui` still running?");
  }
  const body = await response.json().catch(() => ({error: `${response.status} ${response.statusText}`}));
  if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
  return body;
}

function card(match, rank) {
  const item = document.createElement("li");
  const button = document.createElement("button");
  button.type = "button";
  button.className = "moment";
  Object.assign(button.dataset, {video: match.video, start: match.start, end: match.end});
  const still = document.createElement("img");
  still.loading = "lazy";
  still.alt = `Frame of ${fileName(match.video)} at ${seconds((match.start + match.end) / 2)}`;
  still.src = api("/api/still", {video: match.video, t: ((match.start + match.end) / 2).toFixed(2)});
  const text = document.createElement("span");
  text.className = "text";
  const name = document.createElement("span");
  name.className = "name";
  name.textContent = `${rank}. ${fileName(match.video)}`;
  const meta = document.createElement("span");
  meta.className = "meta";
  meta.textContent = ` score ${match.score.toFixed(3)} · ${match.start.toFixed(1)}–${match.end.toFixed(1)} s`;
  meta.title = match.video;
  text.append(name, document.createElement("br"), meta);
  button.append(still, text);
  button.addEventListener("click", () => play(button));
  item.append(button);
  return item;
}

function render(doc) {
  results.replaceChildren();
  $("notes").replaceChildren(...[...doc.warnings, ...doc.errors.map((e) => `${e.video}: ${e.error}`)].map((text) => {
    const li = document.createElement("li");
    li.textContent = text;
    return li;
  }));
  for (const {query, matches} of doc.results) {
    if (doc.results.length > 1) {
      const heading = document.createElement("h2");
      heading.textContent = query;
      results.append(heading);
    }
    if (!matches.length) {
      const none = document.createElement("li");
      none.className = "note";
      none.textContent = "No videos to rank.";
      results.append(none);
    }
    matches.forEach((m, i) => results.append(card(m, i + 1)));
  }
}

async function search(push = true) {
  const query = box.value.trim();
  if (!query) return;
  if (push) history.pushState(null, "", api("/", {q: query, top: count.value}));
  $("status").textContent = `Searching for “${query}”…`;
  try {
    const doc = await getJson(api("/api/search", {q: query, top: count.value}));
    showError("");
    render(doc);
    const found = doc.results.reduce((n, r) => n + r.matches.length, 0);
    $("status").textContent = `${found} moment${found === 1 ? "" : "s"} for “${query}”`;
  } catch (err) {
    showError(err.message);
    $("status").textContent = "";
  }
}

function drawTimeline() {
  const duration = player.duration;
  if (!moment || !isFinite(duration) || duration <= 0) return;
  const percent = (t) => `${Math.min(100, Math.max(0, (100 * t) / duration))}%`;
  $("span").style.left = percent(moment.start);
  $("span").style.width = `calc(${percent(moment.end)} - ${percent(moment.start)})`;
  $("playhead").style.left = percent(player.currentTime);
}

function play(button) {
  const {video} = button.dataset;
  const start = Number(button.dataset.start), end = Number(button.dataset.end);
  for (const other of results.querySelectorAll(".moment")) other.removeAttribute("aria-current");
  button.setAttribute("aria-current", "true");
  moment = {video, start, end};
  $("viewer").hidden = false;
  $("viewer").parentElement.classList.add("playing");
  $("now").textContent = `${video} · ${start.toFixed(1)}–${end.toFixed(1)} s`;
  const source = api("/api/media", {video});
  const seek = () => {
    player.currentTime = start;
    drawTimeline();
    player.play().catch(() => {}); // a browser may refuse to start sound unasked: the player stays at the moment
  };
  if (player.getAttribute("src") === source && player.readyState >= 1) {
    seek();
  } else {
    player.addEventListener("loadedmetadata", seek, {once: true});
    player.src = source;
  }
}

player.addEventListener("timeupdate", drawTimeline);
player.addEventListener("durationchange", drawTimeline);
player.addEventListener("error", () => {
  if (moment) showError(`This browser cannot play ${fileName(moment.video)}; the still shows the moment.`);
});

form.addEventListener("submit", (event) => {
  event.preventDefault();
  search();
});

document.addEventListener("keydown", (event) => {
  const typing = event.target === box;
  if (event.key === "/" && !typing) {
    event.preventDefault();
    box.focus();
    box.select();
    return;
  }
  const cards = [...results.querySelectorAll(".moment")];
  const at = cards.indexOf(document.activeElement);
  if (event.key === "ArrowDown" && (at >= 0 || (event.target === box && cards.length))) {
    event.preventDefault();
    cards[Math.min(cards.length - 1, at + 1)].focus();
  } else if (event.key === "ArrowUp" && at >= 0) {
    event.preventDefault();
    (at === 0 ? box : cards[at - 1]).focus();
  } else if (event.key === "Escape" && at >= 0) {
    box.focus();
  }
});

function fromAddress() {
  const params = new URLSearchParams(location.search);
  box.value = params.get("q") || "";
  if (params.get("top")) count.value = params.get("top");
  if (box.value) search(false);
}

window.addEventListener("popstate", fromAddress);

getJson("/api/health").then((health) => {
  const index = health.index;
  $("status").textContent ||= `${index.videos} videos, ${index.windows} moments indexed · model version ` +
    `${health.model_server.version}`;
  if (health.warnings.length) showError(health.warnings.join(" "));
}).catch((err) => showError(err.message));
fromAddress();
