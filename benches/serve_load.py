"""Load generator for OpenAI-compatible servers: C concurrent clients stream /v1/completions
(greedy, fixed prompt and length) and the script reports throughput, time to first token and
inter-token latency (p50 / p99) per server and concurrency, as JSON lines and a table.
The first server is compared with each of the others.
Usage: serve_load.py NAME=URL [NAME=URL ...] --concurrency 1,8,32 --requests-per-client 4"""
import argparse
import http.client
import json
import statistics
import threading
import time
import urllib.parse


BAN = {}


def stream_one(url, prompt, max_tokens):
    """One streamed completion: (TTFT s, inter-token gaps s, tokens, total s)."""
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    body = json.dumps(
        {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True, "logit_bias": BAN}
    )
    start = time.perf_counter()
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"{url}: HTTP {resp.status} {resp.read()[:200]!r}")
    first, last, gaps, tokens = None, None, [], 0
    for raw in resp:
        line = raw.decode("utf-8").strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if not chunk.get("choices") or chunk["choices"][0].get("finish_reason"):
            continue
        now = time.perf_counter()
        tokens += 1
        if first is None:
            first = now - start
        else:
            gaps.append(now - last)
        last = now
    conn.close()
    return first or 0.0, gaps, tokens, time.perf_counter() - start


def pct(xs, q):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def run(name, url, clients, per_client, prompt, max_tokens):
    results, errors = [], []

    def client():
        for _ in range(per_client):
            try:
                results.append(stream_one(url, prompt, max_tokens))
            except Exception as e:  # reported, not hidden
                errors.append(str(e))

    stream_one(url, prompt, max_tokens)  # warm-up
    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ttft = [r[0] for r in results]
    itl = [g for r in results for g in r[1]]
    tokens = sum(r[2] for r in results)
    return {
        "server": name, "concurrency": clients, "requests": len(results), "errors": len(errors),
        "tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall if wall else 0.0,
        "ttft_p50_ms": 1e3 * pct(ttft, 0.5), "ttft_p99_ms": 1e3 * pct(ttft, 0.99),
        "itl_p50_ms": 1e3 * pct(itl, 0.5), "itl_p99_ms": 1e3 * pct(itl, 0.99),
        "first_error": errors[0] if errors else None,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("servers", nargs="+", help="NAME=URL")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--requests-per-client", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--prompt", default="The city of Bramford is known for its old bridges and")
    ap.add_argument("--ban", default="", help="token ids LO-HI never generated (special tokens), so every server "
                    "writes exactly --max-tokens tokens")
    a = ap.parse_args()
    if a.ban:
        lo, hi = (int(x) for x in a.ban.split("-"))
        BAN.update({str(i): -100 for i in range(lo, hi + 1)})
    rows = []
    for c in [int(x) for x in a.concurrency.split(",")]:
        for s in a.servers:
            name, url = s.split("=", 1)
            row = run(name, url, c, a.requests_per_client, a.prompt, a.max_tokens)
            row["complete"] = row["tokens"] == row["requests"] * a.max_tokens
            print(json.dumps(row), flush=True)
            rows.append(row)
    print("\n| server | streams | tokens/s | TTFT p50 / p99 ms | ITL p50 / p99 ms | tokens | errors |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['server']} | {r['concurrency']} | {r['tokens_per_s']:.0f} | {r['ttft_p50_ms']:.1f} / {r['ttft_p99_ms']:.1f} "
              f"| {r['itl_p50_ms']:.2f} / {r['itl_p99_ms']:.2f} | {r['tokens']} | {r['errors']} |")
    if not all(r["complete"] for r in rows):
        print("WARNING: some requests ended before --max-tokens: the throughputs are not comparable")
    # The first server named against each of the others.
    names = [s.split("=", 1)[0] for s in a.servers]
    for peer in names[1:]:
        for c in sorted({r["concurrency"] for r in rows}):
            ours, theirs = (next(r for r in rows if r["server"] == n and r["concurrency"] == c) for n in (names[0], peer))
            ratio = ours["tokens_per_s"] / max(theirs["tokens_per_s"], 1e-9)
            print(f"throughput {names[0]} / {peer} at {c} streams: {ratio:.2f}x")


if __name__ == "__main__":
    main()
