// The official `openai` npm SDK (offline tarball ../shared/clients/openai-7.57.0.tgz) against a running
// ai-sandbox-api: chat sync + stream, completions, models with a `/` in the id, and the SDK's error classes.
// scripts/test sets AI_SANDBOX_BASE_URL (".../v1") and AI_SANDBOX_MODEL_ID.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI, { BadRequestError, NotFoundError } from 'openai';

const baseURL = process.env.AI_SANDBOX_BASE_URL ?? 'http://127.0.0.1:8000/v1';
const model = process.env.AI_SANDBOX_MODEL_ID ?? 'HuggingFaceTB/SmolLM2-135M-Instruct';
const client = new OpenAI({ baseURL, apiKey: 'sk-anything', maxRetries: 0, timeout: 300_000 });
const messages = [{ role: 'user', content: 'Say hello in five words.' }];

test('chat sync: shape, usage, request id', async () => {
  const { data, request_id } = await client.chat.completions
    .create({ model, messages, max_tokens: 16, temperature: 0 })
    .withResponse();
  assert.ok(request_id, 'x-request-id missing');
  assert.equal(data.object, 'chat.completion');
  assert.equal(data.model, model);
  assert.equal(data.choices.length, 1);
  const [choice] = data.choices;
  assert.equal(choice.index, 0);
  assert.equal(choice.message.role, 'assistant');
  assert.equal(choice.message.refusal, null);
  assert.ok('logprobs' in choice);
  assert.ok(choice.message.content.trim().length > 0);
  assert.ok(['stop', 'length'].includes(choice.finish_reason));
  assert.equal(data.usage.total_tokens, data.usage.prompt_tokens + data.usage.completion_tokens);
});

test('chat stream: role first, one finish_reason, same id, same text as sync at temperature 0', async () => {
  const stream = await client.chat.completions.create({ model, messages, max_tokens: 16, temperature: 0, stream: true });
  const chunks = [];
  for await (const chunk of stream) chunks.push(chunk);
  assert.ok(chunks.length >= 2);
  assert.equal(new Set(chunks.map((c) => c.id)).size, 1);
  assert.equal(chunks[0].choices[0].delta.role, 'assistant');
  assert.ok(chunks.slice(1).every((c) => c.choices[0].delta.role === undefined), 'role repeated');
  const finishes = chunks.map((c) => c.choices[0].finish_reason).filter((f) => f != null);
  assert.equal(finishes.length, 1);
  assert.ok(chunks.every((c) => c.object === 'chat.completion.chunk'));
  const streamed = chunks.map((c) => c.choices[0].delta.content ?? '').join('');
  const sync = await client.chat.completions.create({ model, messages, max_tokens: 16, temperature: 0 });
  assert.equal(streamed, sync.choices[0].message.content);
});

test('chat stream with include_usage ends with a choices:[] usage chunk', async () => {
  const stream = await client.chat.completions.create({
    model, messages, max_tokens: 8, stream: true, stream_options: { include_usage: true },
  });
  const chunks = [];
  for await (const chunk of stream) chunks.push(chunk);
  const last = chunks.at(-1);
  assert.deepEqual(last.choices, []);
  assert.ok(last.usage.completion_tokens >= 1 && last.usage.completion_tokens <= 8);
});

test('completions: string prompt, token ids, echo', async () => {
  const text = await client.completions.create({ model, prompt: 'Hello', max_tokens: 6, temperature: 0 });
  assert.equal(text.object, 'text_completion');
  assert.ok(text.choices[0].text.length > 0);
  assert.equal(text.usage.prompt_tokens, 1);
  const ids = await client.completions.create({ model, prompt: [19556], max_tokens: 6, temperature: 0 });
  assert.equal(ids.choices[0].text, text.choices[0].text);
  const echoed = await client.completions.create({ model, prompt: 'Hello', max_tokens: 6, temperature: 0, echo: true });
  assert.equal(echoed.choices[0].text, 'Hello' + text.choices[0].text);
});

test('models: list contains the id, retrieve works with a / in it', async () => {
  assert.ok(model.includes('/'));
  const ids = [];
  for await (const m of client.models.list()) ids.push(m.id);
  assert.ok(ids.includes(model), `${model} not in ${ids}`);
  const one = await client.models.retrieve(model);
  assert.equal(one.id, model);
  assert.equal(one.object, 'model');
  assert.equal(typeof one.created, 'number');
  assert.equal(typeof one.owned_by, 'string');
});

test('errors raise the SDK classes', async () => {
  await assert.rejects(client.chat.completions.create({ model, messages, n: 2 }), BadRequestError);
  await assert.rejects(client.chat.completions.create({ model, messages, temperature: 5 }), BadRequestError);
  await assert.rejects(
    client.chat.completions.create({ model, messages, tools: [{ type: 'function', function: { name: 'f' } }] }),
    BadRequestError,
  );
  await assert.rejects(client.chat.completions.create({ model: 'no-such-model', messages }), NotFoundError);
  await assert.rejects(client.models.retrieve('no-such/model'), (err) => {
    assert.ok(err instanceof NotFoundError);
    assert.equal(err.status, 404);
    assert.equal(typeof err.error?.message, 'string');
    return true;
  });
});
