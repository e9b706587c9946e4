// redbatch dashboard: refresh the page's fragments, and replay dead letters through the API.
// Fragments are HTML the server rendered with every value escaped; this script only swaps
// them in. The API token, when the service needs one, is asked for on the first 401 and kept
// in this tab's sessionStorage.
"use strict";

const TOKEN_KEY = "redbatch-token";
let pendingAction = null;
let polling = false;

function say(text, isError) {
  const message = document.getElementById("message");
  message.textContent = text;
  message.className = isError ? "message error" : "message";
}

async function refresh() {
  if (polling) return;
  polling = true;
  const live = document.getElementById("live");
  try {
    for (const box of document.querySelectorAll("[data-fragment]")) {
      const response = await fetch(box.dataset.fragment, { headers: { Accept: "text/html" } });
      if (!response.ok) throw new Error(`${response.status} ${response.statusText}`);
      box.innerHTML = await response.text();
    }
    live.textContent = "live";
    live.className = "live";
  } catch (error) {
    live.textContent = "offline";
    live.className = "live offline";
  } finally {
    polling = false;
  }
}

function askToken(action) {
  pendingAction = action;
  const form = document.getElementById("token-form");
  form.hidden = false;
  document.getElementById("token-input").focus();
}

async function replay(button) {
  const headers = { "Content-Type": "application/json" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  const batcher = button.dataset.batcher;
  button.disabled = true;
  try {
    const response = await fetch(`/batchers/${encodeURIComponent(batcher)}/dead-letters/replay`, {
      method: "POST",
      headers,
      body: JSON.stringify({ ids: [button.dataset.id] }),
    });
    if (response.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      askToken(() => replay(button));
      return;
    }
    const body = await response.json();
    if (!response.ok) {
      say(`replay failed: ${body.error ? body.error.message : response.status}`, true);
      return;
    }
    say(`replayed ${body.replayed} items of ${batcher}`, false);
    await refresh();
  } catch (error) {
    say(`replay failed: ${error}`, true);
  } finally {
    button.disabled = false;
  }
}

document.addEventListener("click", (event) => {
  const button = event.target.closest("button.replay");
  if (button) replay(button);
});

document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("token-form");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, document.getElementById("token-input").value);
    document.getElementById("token-input").value = "";
    form.hidden = true;
    const action = pendingAction;
    pendingAction = null;
    if (action) action();
  });
  document.getElementById("token-cancel").addEventListener("click", () => {
    form.hidden = true;
    pendingAction = null;
  });
  const interval = Number(document.body.dataset.pollMs) || 1000;
  setInterval(refresh, interval);
});
