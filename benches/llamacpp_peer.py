"""llama.cpp (through llama-cpp-python) on a GGUF file: greedy generation from the prompt that
`tsukuru bench generate --model` used, timed the same way (prompt + new tokens, median of runs).

    python llamacpp_peer.py MODEL.gguf TSUKURU_RESULT.json --threads 2 --steps 10

Prints one JSON line with the same keys as `tsukuru bench generate`, plus how many greedy tokens
agree with tsukuru's and llama.cpp's own timing of its decode calls (no Python in it).
"""
import argparse
import json
import time

import llama_cpp

ap = argparse.ArgumentParser()
ap.add_argument("gguf")
ap.add_argument("tsukuru_json")
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--steps", type=int, default=10)
args = ap.parse_args()

ref = json.loads(open(args.tsukuru_json).read().strip().splitlines()[-1])
prompt, expected = ref["prompt_ids"], ref["generated"]
new_tokens = len(expected)
llm = llama_cpp.Llama(
    model_path=args.gguf,
    n_ctx=len(prompt) + new_tokens,
    n_batch=len(prompt),
    n_threads=args.threads,
    n_threads_batch=args.threads,
    verbose=False,
)


def run():
    # A cleared context each time: the prompt is evaluated again, as tsukuru does.
    llm.reset()
    out = []
    for tok in llm.generate(prompt, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
        out.append(tok)
        if len(out) == new_tokens:
            break
    return out


run()
times, tokens = [], None
for _ in range(max(args.steps, 1)):
    t = time.perf_counter()
    tokens = run()
    times.append(time.perf_counter() - t)
times.sort()
run_s = times[len(times) // 2]
perf = llama_cpp.llama_perf_context(llm._ctx.ctx)
agree = next((i for i, (a, b) in enumerate(zip(tokens, expected)) if a != b), min(len(tokens), len(expected)))
print(json.dumps({
    "mode": "generate", "impl": "llama.cpp", "version": llama_cpp.__version__, "batch": 1,
    "prompt": len(prompt), "new_tokens": new_tokens, "run_s": round(run_s, 4),
    "tokens_per_s": round(new_tokens / run_s, 1), "threads": args.threads,
    # The last run's decode calls as llama.cpp timed them (one token each after the prompt).
    "decode_tokens_per_s_internal": round(perf.n_eval / (perf.t_eval_ms / 1e3), 1) if perf.t_eval_ms else None,
    "same_greedy_prefix": agree, "same_greedy_tokens": tokens == expected,
}))
