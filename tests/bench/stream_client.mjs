// stream_client.mjs - the HTTP pieces the serving benchmarks share
// (serve_bench.mjs, mixed_bench.mjs): a GET returning the body, and one
// streamed /v1/completions request (greedy, ignore_eos, usage included)
// resolving with its timings.
import http from 'node:http';

// base: URL of the server; agent: the keep-alive http.Agent the caller sized.
export function streamClient(base, agent) {
  function getText(path) {
    return new Promise((resolve, reject) => {
      http.get({ host: base.hostname, port: base.port, path, agent }, (res) => {
        let b = '';
        res.on('data', (c) => (b += c));
        res.on('end', () => (res.statusCode === 200 ? resolve(b) : reject(new Error(`${path}: ${res.statusCode} ${b}`))));
      }).on('error', reject);
    });
  }

  // One streamed completion. Resolves with start / end (performance.now()),
  // ttft, the gaps between SSE chunks, the first and last chunk's time (a
  // chunk can carry several tokens; chunks read in one socket read share a
  // timestamp), and the usage's token counts.
  function streamOne(model, prompt, maxTokens) {
    return new Promise((resolve, reject) => {
      const body = JSON.stringify({
        model, prompt, max_tokens: maxTokens, temperature: 0, ignore_eos: true,
        stream: true, stream_options: { include_usage: true },
      });
      const t0 = performance.now();
      const chunkTimes = [];
      let usage = null, buf = '';
      const req = http.request(
        {
          host: base.hostname, port: base.port, method: 'POST', path: '/v1/completions', agent,
          headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) },
        },
        (res) => {
          if (res.statusCode !== 200) {
            let e = '';
            res.on('data', (c) => (e += c));
            res.on('end', () => reject(new Error(`HTTP ${res.statusCode}: ${e.slice(0, 200)}`)));
            return;
          }
          res.setEncoding('utf8');
          res.on('data', (c) => {
            const now = performance.now();
            buf += c;
            let i;
            while ((i = buf.indexOf('\n\n')) >= 0) {
              const ev = buf.slice(0, i);
              buf = buf.slice(i + 2);
              if (!ev.startsWith('data: ') || ev === 'data: [DONE]') continue;
              const j = JSON.parse(ev.slice(6));
              if (j.error) return reject(new Error(JSON.stringify(j.error)));
              if (j.choices.length) chunkTimes.push(now);
              else usage = j.usage;
            }
          });
          res.on('end', () => {
            const t1 = performance.now();
            if (!usage || !chunkTimes.length) return reject(new Error('stream without tokens or usage'));
            const gaps = [];
            for (let k = 1; k < chunkTimes.length; k++) gaps.push(chunkTimes[k] - chunkTimes[k - 1]);
            resolve({
              start: t0, end: t1, ttft: chunkTimes[0] - t0, gaps,
              firstChunk: chunkTimes[0], lastChunk: chunkTimes[chunkTimes.length - 1],
              tokens: usage.completion_tokens, promptTokens: usage.prompt_tokens,
            });
          });
        },
      );
      req.on('error', reject);
      req.end(body);
    });
  }

  return { getText, streamOne };
}
