"""Checks `tsukuru serve` with the official OpenAI Python client: models, chat, streaming with
usage, completions with echoed log-probabilities, errors, and concurrent greedy requests that
must match sequential ones. Usage: openai_client.py BASE_URL API_KEY"""
import sys
import threading

import openai
from openai import OpenAI

base, key = sys.argv[1], sys.argv[2]
client = OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)
name = client.models.list().data[0].id


def ask(question, **kw):
    r = client.chat.completions.create(
        model=name, messages=[{"role": "user", "content": question}], temperature=0, max_tokens=24, **kw
    )
    return r


whole = ask("Where was Ana born?")
text = whole.choices[0].message.content
u = whole.usage
assert u.total_tokens == u.prompt_tokens + u.completion_tokens and u.completion_tokens > 0, u
assert whole.choices[0].finish_reason in ("stop", "length")

parts, usage = [], None
for chunk in client.chat.completions.create(
    model=name,
    messages=[{"role": "user", "content": "Where was Ana born?"}],
    temperature=0,
    max_tokens=24,
    stream=True,
    stream_options={"include_usage": True},
):
    if chunk.choices:
        parts.append(chunk.choices[0].delta.content or "")
    if chunk.usage:
        usage = chunk.usage
assert "".join(parts) == text, (parts, text)
assert usage is not None and usage.completion_tokens == u.completion_tokens, usage

c = client.completions.create(model=name, prompt="The city of", max_tokens=0, echo=True, logprobs=1)
lp = c.choices[0].logprobs
assert "".join(lp.tokens) == "The city of", lp.tokens
assert all(x is not None and x < 0 for x in lp.token_logprobs), lp.token_logprobs

gen = client.completions.create(model=name, prompt="The city of", max_tokens=8, temperature=0, n=2, seed=3)
assert len(gen.choices) == 2

try:
    ask("word " * 400)
    raise SystemExit("a prompt over the context was accepted")
except openai.BadRequestError as e:
    assert "context" in str(e), e
try:
    OpenAI(base_url=f"{base}/v1", api_key="wrong", max_retries=0).models.list()
    raise SystemExit("a wrong key was accepted")
except openai.AuthenticationError:
    pass

questions = [f"Who founded company number {i}?" for i in range(8)]
alone = [ask(q).choices[0].message.content for q in questions]
together = [None] * len(questions)


def worker(i):
    together[i] = ask(questions[i]).choices[0].message.content


threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(questions))]
for t in threads:
    t.start()
for t in threads:
    t.join()
assert together == alone, (together, alone)
print(f"openai client {openai.__version__}: models, chat, stream, completions, errors and 8 concurrent streams ok")
