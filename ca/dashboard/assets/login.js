// The sign-in page: exchanges a dashboard token for a session cookie. The
// token comes in the URL's fragment (#token=…), which the browser never
// sends to the server; it is removed from the address bar and history at
// once. The cookie is HttpOnly: no script sees it.
'use strict';
(function () {
  const status = document.getElementById('status');
  const form = document.getElementById('form');
  const input = document.getElementById('token');

  async function signIn(token) {
    status.textContent = 'Signing in…';
    let resp;
    try {
      resp = await fetch('api/session', {
        method: 'POST',
        headers: { Authorization: 'Bearer ' + token },
        credentials: 'same-origin',
        cache: 'no-store',
      });
    } catch (e) {
      status.textContent = 'The server cannot be reached: ' + e.message;
      return;
    }
    if (resp.status === 204) {
      location.replace('./');
      return;
    }
    status.textContent = resp.status === 401
      ? 'The token was refused: it may have expired. Run tallyctl dashboard token for another.'
      : 'Sign-in failed: ' + resp.status + ' ' + resp.statusText;
  }

  const params = new URLSearchParams(location.hash.slice(1));
  const token = params.get('token');
  if (token) {
    history.replaceState(null, '', location.pathname + location.search);
    signIn(token);
  }
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const t = input.value.trim();
    input.value = '';
    if (t) signIn(t);
  });
})();
