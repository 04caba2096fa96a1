"""Overload check for `tsukuru serve` (standard library only).

Usage: overload.py BASE_URL API_KEY SERVER_PID

Sends 256 concurrent streamed completions to a server that runs 4 and queues 8: the rest must get
429 with Retry-After, every accepted stream must run to [DONE], and the server's peak resident
memory must stay within a fixed margin of what it used before. Then 64 streams are abandoned
after their first chunk: the server must cancel them (no request left running). Finally an
ordinary request must still be answered.
"""
import http.client
import json
import sys
import threading
import time
from urllib.parse import urlparse

base, key, pid = sys.argv[1], sys.argv[2], int(sys.argv[3])
url = urlparse(base)
MARGIN_MIB = 64


def memory():
    """(current, peak) resident MiB of the server."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            fields[name] = value.strip()
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def post(body, read_all=True):
    """POSTs a completion request; returns (status, headers, chunks read)."""
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=300)
    conn.request("POST", "/v1/completions", json.dumps(body), {
        "Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    resp = conn.getresponse()
    chunks = []
    if resp.status == 200 and body.get("stream"):
        for raw in resp:
            line = raw.decode().strip()
            if line.startswith("data: "):
                chunks.append(line[6:])
                if not read_all or line == "data: [DONE]":
                    break
    else:
        chunks.append(resp.read().decode())
    headers = dict(resp.getheaders())
    conn.close()
    return resp.status, headers, chunks


def metric(name):
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    conn.request("GET", "/metrics", headers={"Authorization": f"Bearer {key}"})
    text = conn.getresponse().read().decode()
    conn.close()
    return float(next(l.split()[-1] for l in text.splitlines() if l.startswith(name + " ")))


prompt = "The river town keeps its old bridge and the market by the water " * 3
request = {"model": "m", "prompt": prompt, "max_tokens": 48, "temperature": 0.8, "stream": True}
post(dict(request, stream=False, max_tokens=8))
before, _ = memory()

results = []
lock = threading.Lock()


def client():
    status, headers, chunks = post(request)
    with lock:
        results.append((status, headers, chunks))


threads = [threading.Thread(target=client) for _ in range(256)]
for t in threads:
    t.start()
for t in threads:
    t.join()
accepted = [r for r in results if r[0] == 200]
refused = [r for r in results if r[0] == 429]
assert len(accepted) + len(refused) == 256, sorted({r[0] for r in results})
assert accepted and refused, f"{len(accepted)} accepted, {len(refused)} refused"
assert all(r[1].get("retry-after") or r[1].get("Retry-After") for r in refused), "a 429 without Retry-After"
assert all(r[2][-1] == "[DONE]" for r in accepted), "an accepted stream did not finish"
assert all("rate_limit" in r[2][0] or "busy" in r[2][0] for r in refused), refused[0][2]

# Abandoned streams: read one chunk, hang up.
threads = [threading.Thread(target=post, args=(dict(request, max_tokens=120), False)) for _ in range(64)]
for t in threads:
    t.start()
for t in threads:
    t.join()
deadline = time.time() + 60
while (metric("tsukuru_running_requests") or metric("tsukuru_queue_depth")) and time.time() < deadline:
    time.sleep(0.1)
assert metric("tsukuru_running_requests") == 0 and metric("tsukuru_queue_depth") == 0, "abandoned requests still run"

_, peak = memory()
status, _, _ = post(dict(request, stream=False, max_tokens=8))
assert status == 200, status
assert peak - before <= MARGIN_MIB, f"peak RSS {peak:.0f} MiB grew {peak - before:.0f} MiB past {before:.0f} MiB"
print(f"overload: 256 concurrent streams -> {len(accepted)} served, {len(refused)} refused with 429 + Retry-After; "
      f"64 abandoned streams cancelled; RSS {before:.0f} MiB before, peak {peak:.0f} MiB (limit +{MARGIN_MIB} MiB)")
