// chat_template.mjs - checks which prompt capmoe-server built for a chat
// request: the prompt tokens it reports (usage.prompt_tokens) must be the
// tokens of the expected prompt text (POST /tokenize, no special tokens
// added: the template writes them), or the request must fail with a 400
// whose message holds the expected text.
//
//   node chat_template.mjs URL MESSAGES_JSON (--prompt TEXT | --error TEXT)
// TEXT is a JSON string ("..."), so that newlines survive the shell.
const [url, messages, mode, wantJson] = process.argv.slice(2);
const want = JSON.parse(wantJson);

async function post(path, body) {
  const r = await fetch(url + path, { method: 'POST', headers: { 'Content-Type': 'application/json' },
                                       body: JSON.stringify(body) });
  return { status: r.status, json: await r.json() };
}

const chat = await post('/v1/chat/completions', { messages: JSON.parse(messages), max_tokens: 1, temperature: 0 });
if (mode === '--error') {
  const msg = chat.json.error && chat.json.error.message;
  if (chat.status !== 400 || !msg || !msg.includes(want)) {
    console.error(`want 400 with "${want}", got ${chat.status} ${JSON.stringify(chat.json)}`);
    process.exit(1);
  }
} else {
  if (chat.status !== 200) {
    console.error(`chat: ${chat.status} ${JSON.stringify(chat.json)}`);
    process.exit(1);
  }
  const tok = await post('/tokenize', { prompt: want, add_special_tokens: false });
  if (tok.status !== 200 || tok.json.count !== chat.json.usage.prompt_tokens) {
    console.error(`prompt tokens ${chat.json.usage.prompt_tokens}, tokens of ${JSON.stringify(want)}: ` +
                  `${JSON.stringify(tok.json)}`);
    process.exit(1);
  }
}
console.log(`ok ${mode} ${JSON.stringify(want).slice(0, 80)}`);
