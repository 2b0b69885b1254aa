// Every call to the server goes through request(): it adds the bearer token the user gave (kept in
// sessionStorage, so it ends with the tab), asks for one when the server answers 401, and turns the
// API's error envelope {"error": {code, message, status}} into an ApiError with a readable message.

const TOKEN_KEY = "dicomlake.token";

export class ApiError extends Error {
  constructor(code, status, message) {
    super(message);
    this.code = code;
    this.status = status;
  }

  toString() {
    return `${this.code} ${this.status}: ${this.message}`;
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
  document.dispatchEvent(new Event("tokenchange"));
}

// One dialog at a time: requests that meet a 401 together wait for the same answer.
let asking = null;

// The token dialog; resolves once a token is set, rejects when the user cancels.
export function askToken(refused) {
  if (!asking) {
    asking = new Promise((resolve, reject) => {
      const dialog = document.getElementById("token-dialog");
      const form = dialog.querySelector("form");
      const input = dialog.querySelector("input");
      dialog.querySelector(".refused").hidden = !refused;
      input.value = "";
      const done = (value) => {
        form.onsubmit = dialog.oncancel = form.querySelector(".cancel").onclick = null;
        dialog.close();
        asking = null;
        if (value) {
          setToken(value);
          resolve();
        } else {
          reject(new ApiError(401, "UNAUTHENTICATED", "this server needs an access token, and none was given"));
        }
      };
      form.onsubmit = (event) => {
        event.preventDefault();
        done(input.value.trim());
      };
      dialog.oncancel = form.querySelector(".cancel").onclick = (event) => {
        event.preventDefault();
        done("");
      };
      dialog.showModal();
      input.focus();
    });
  }
  return asking;
}

async function errorOf(response) {
  const text = await response.text();
  try {
    const { error } = JSON.parse(text);
    if (error && error.message) return new ApiError(error.code || response.status, error.status || "", error.message);
  } catch {
    // not the JSON envelope: show the text as it came
  }
  return new ApiError(response.status, response.statusText, text.slice(0, 500) || "no details");
}

// fetch() with the token, the 401 dialog and API errors; resolves to the Response of a 2xx answer.
// `allow` lists statuses besides 2xx whose answer the caller reads itself (a STOW-RS 409 says which
// instances failed).
export async function request(url, { method = "GET", accept = "application/json", body, json, contentType, allow = [], signal } = {}) {
  const headers = { Accept: accept };
  if (contentType) headers["Content-Type"] = contentType;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  }
  for (;;) {
    const used = token();
    if (used) headers.Authorization = `Bearer ${used}`;
    else delete headers.Authorization;
    const response = await fetch(url, { method, headers, body, signal });
    if (response.status === 401) {
      // Another request may have brought a new token meanwhile: try that one before asking.
      if (token() === used) await askToken(Boolean(used));
      continue;
    }
    if (!response.ok && !allow.includes(response.status)) throw await errorOf(response);
    return response;
  }
}

// The JSON of an answer; null for 204 No Content (an empty QIDO search).
export async function getJSON(url, options = {}) {
  const response = await request(url, options);
  return response.status === 204 ? null : response.json();
}

export function postJSON(url, json, options = {}) {
  return getJSON(url, { ...options, method: "POST", json });
}

// Resource names and their URLs.
export function locationPath(project, location) {
  return `/v1/projects/${enc(project)}/locations/${enc(location)}`;
}

export function datasetPath(ctx) {
  return `${locationPath(ctx.project, ctx.location)}/datasets/${enc(ctx.dataset)}`;
}

export function storePath(ctx) {
  return `${datasetPath(ctx)}/dicomStores/${enc(ctx.store)}`;
}

export function dicomweb(ctx) {
  return `${storePath(ctx)}/dicomWeb`;
}

export function bigquery(project) {
  return `/bigquery/v2/projects/${enc(project)}`;
}

export function enc(value) {
  return encodeURIComponent(value || "");
}

// The last segment of a resource name ("projects/p/.../dicomStores/ct" -> "ct").
export function lastSegment(name) {
  return String(name).split("/").pop();
}
