// cors_page.mjs - the web page of the CORS test (tests/t_server_cors.sh): a
// tiny static server on 127.0.0.1 whose page, opened in headless Chromium,
// calls capmoe-server (another origin) with fetch and posts what it saw back
// here (same origin), where it is written to RESULT_FILE.
//   node cors_page.mjs PORT_FILE RESULT_FILE
// Prints nothing; writes its port to PORT_FILE once listening. The page is
// /page.html?api=URL&key=KEY&tag=TAG.
import fs from 'node:fs';
import http from 'node:http';

const [portFile, resultFile] = process.argv.slice(2);

const PAGE = `<!doctype html>
<html><head><meta charset="utf-8"><title>capmoe CORS test</title></head>
<body><pre id="out">running</pre>
<script>
const q = new URLSearchParams(location.search);
const api = q.get('api'), key = q.get('key'), tag = q.get('tag');
const res = { tag, origin: location.origin };
async function step(name, fn) {
  try { res[name] = await fn(); } catch (e) { res[name] = { error: e.name + ': ' + e.message }; }
}
(async () => {
  // a JSON POST with a bearer token: the browser sends a preflight first
  await step('chat', async () => {
    const r = await fetch(api + '/v1/chat/completions', { method: 'POST',
      headers: { 'Content-Type': 'application/json', 'Authorization': 'Bearer ' + key,
                 'X-Request-Id': 'from-the-page-' + tag },
      body: JSON.stringify({ messages: [{ role: 'user', content: 'hi' }], max_tokens: 4, ignore_eos: true }) });
    const j = await r.json();
    return { status: r.status, requestId: r.headers.get('X-Request-Id'),
             tokens: j.usage && j.usage.completion_tokens, object: j.object };
  });
  // a stream read chunk by chunk
  await step('stream', async () => {
    const r = await fetch(api + '/v1/completions', { method: 'POST',
      headers: { 'Content-Type': 'application/json', 'Authorization': 'Bearer ' + key },
      body: JSON.stringify({ prompt: 'hello', max_tokens: 6, stream: true }) });
    const reader = r.body.getReader();
    const dec = new TextDecoder();
    let text = '', chunks = 0;
    for (;;) { const { done, value } = await reader.read(); if (done) break; chunks++; text += dec.decode(value); }
    return { status: r.status, chunks, done: text.trimEnd().endsWith('data: [DONE]') };
  });
  // an error answer is readable too (its CORS headers are there)
  await step('unauthorized', async () => {
    const r = await fetch(api + '/v1/models', { headers: { 'Authorization': 'Bearer wrong' } });
    const j = await r.json();
    return { status: r.status, code: j.error && j.error.code, retryAfter: r.headers.get('Retry-After') };
  });
  document.getElementById('out').textContent = JSON.stringify(res);
  await fetch('/result', { method: 'POST', body: JSON.stringify(res) });
})();
</script></body></html>`;

const server = http.createServer((req, res) => {
  if (req.method === 'GET' && req.url.startsWith('/page.html')) {
    res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' });
    res.end(PAGE);
  } else if (req.method === 'POST' && req.url === '/result') {
    let body = '';
    req.on('data', (c) => { body += c; });
    req.on('end', () => {
      fs.appendFileSync(resultFile, body + '\n');
      res.writeHead(204);
      res.end();
    });
  } else {
    res.writeHead(404);
    res.end();
  }
});
server.listen(0, '127.0.0.1', () => fs.writeFileSync(portFile, String(server.address().port)));
