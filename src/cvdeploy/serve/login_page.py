"""The browser login page of a secured server (``GET /login``), one self-contained file.

It posts the user name, password and one-time code to ``POST /v1/auth/session`` with
``fetch`` (same origin), which answers with the ``HttpOnly`` session cookie, then goes to
``__NEXT__`` (replaced by :func:`cvdeploy.serve.authorizer.login_html` with a checked local
path). No script, style or font is loaded from anywhere else.
"""

from __future__ import annotations

LOGIN_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>cvdeploy: log in</title>
<style>
  body { font-family: system-ui, sans-serif; background: #f4f5f7; margin: 0; }
  main { max-width: 22rem; margin: 12vh auto; background: #fff; padding: 1.5rem 2rem;
         border-radius: 8px; box-shadow: 0 1px 4px rgba(0,0,0,.12); }
  h1 { font-size: 1.2rem; margin: 0 0 1rem; }
  label { display: block; margin: .7rem 0 .2rem; font-size: .9rem; }
  input { width: 100%; box-sizing: border-box; padding: .45rem; font-size: 1rem; }
  button { margin-top: 1.1rem; width: 100%; padding: .55rem; font-size: 1rem; }
  #error { color: #b00020; min-height: 1.2rem; margin-top: .8rem; font-size: .9rem; }
</style>
</head>
<body>
<main>
  <h1>cvdeploy: log in</h1>
  <form id="login" autocomplete="on">
    <label for="username">User name</label>
    <input id="username" name="username" required autocomplete="username">
    <label for="password">Password</label>
    <input id="password" name="password" type="password" required
           autocomplete="current-password">
    <label for="totp">One-time code (authenticator app)</label>
    <input id="totp" name="totp" inputmode="numeric" pattern="[0-9]{6,8}"
           autocomplete="one-time-code">
    <button type="submit">Log in</button>
    <div id="error" role="alert"></div>
  </form>
</main>
<script>
const NEXT = "__NEXT__";
document.getElementById("login").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const err = document.getElementById("error");
  err.textContent = "";
  const code = document.getElementById("totp").value.trim();
  const body = {
    username: document.getElementById("username").value,
    password: document.getElementById("password").value,
    totp: code === "" ? null : code,
  };
  try {
    const r = await fetch("/v1/auth/session", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    if (r.ok) {
      await r.json();  // read to the end: navigating first would abort the response
      window.location.assign(NEXT);
      return;
    }
    let msg = "log in failed (HTTP " + r.status + ")";
    try {
      const j = await r.json();
      if (j.error && j.error.message) msg = j.error.message;
    } catch (e) { /* not JSON */ }
    err.textContent = msg;
  } catch (e) {
    err.textContent = "the server could not be reached";
  }
});
</script>
</body>
</html>
"""
