// The search page: asks /api/search for text or for a moment ("more like this"), shows each video's moments,
// plays the chosen one from its start. No outside resources.
"use strict";
const $ = (id) => document.getElementById(id);
const form = $("search"), box = $("q"), count = $("top"), results = $("results"), player = $("player");
const MOMENTS = 3; // asked per video: the best one on the card, the others listed under it
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

function momentButton(video, m, className) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = className;
  Object.assign(button.dataset, {video, start: m.start, end: m.end});
  button.addEventListener("click", () => play(button));
  return button;
}

function card(match, rank) {
  const item = document.createElement("li");
  item.className = "card";
  const button = momentButton(match.video, match, "moment");
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
  const actions = document.createElement("div");
  actions.className = "actions";
  for (const other of match.moments.slice(1)) {
    const extra = momentButton(match.video, other, "moment extra");
    extra.textContent = `${other.start.toFixed(1)}–${other.end.toFixed(1)} s`;
    extra.title = `also here, score ${other.score.toFixed(3)}`;
    actions.append(extra);
  }
  const like = document.createElement("button");
  like.type = "button";
  like.className = "like";
  like.textContent = "More like this";
  like.title = `Moments that look like ${fileName(match.video)} ${match.start.toFixed(1)}–${match.end.toFixed(1)} s`;
  like.addEventListener("click", () => {
    box.value = "";
    search(true, `${match.video}@${match.start.toFixed(2)}-${match.end.toFixed(2)}`);
  });
  actions.append(like);
  item.append(button, actions);
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

// A text query, or `like` (VIDEO@START-END): the moments that look like that one.
async function search(push = true, like = null) {
  const query = box.value.trim();
  if (!query && !like) return;
  const asked = like ? {like, top: count.value} : {q: query, top: count.value};
  const label = like ? `moments like ${fileName(like)}` : `“${query}”`;
  if (push) history.pushState(null, "", api("/", asked));
  $("status").textContent = `Searching for ${label}…`;
  try {
    const doc = await getJson(api("/api/search", {...asked, moments: MOMENTS}));
    showError("");
    render(doc);
    const found = doc.results.reduce((n, r) => n + r.matches.length, 0);
    $("status").textContent = `${found} video${found === 1 ? "" : "s"} for ${label}`;
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
  if (box.value || params.get("like")) search(false, box.value ? null : params.get("like"));
}

window.addEventListener("popstate", fromAddress);

getJson("/api/health").then((health) => {
  const index = health.index;
  $("status").textContent ||= `${index.videos} videos, ${index.windows} windows indexed · model version ` +
    `${index.model_version}`;
}).catch((err) => showError(err.message));
fromAddress();
