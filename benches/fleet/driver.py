#!/usr/bin/env python3
"""The measurements of benches/fleet/run (Python 3, standard library only).

`run` starts the processes and describes them in a JSON file (--fleets); this program measures,
prints each result as it comes and a summary table at the end (and writes --json FILE):

  revocation  create a key on instance A, warm it on every instance, revoke it on A, then poll
              every other instance from the moment the revoke response arrives until its first
              401; idle, then with wrk loading every instance with another key
  limit       one key with a global rate limit, flooded through 2 instances (the others
              paused until the fleet counts 2) and through N; admitted against burst + rate ×
              elapsed; again with Redis frozen (SIGSTOP) mid-run for 60 ms (one reply just over
              the store timeout) and for 1 s
  quota       one key with `quota: {limit: Q, refill: none}` used on every instance at once
              until refused: admitted must be exactly Q
  throughput  wrk against every instance at once (keys in rotation, cache hits), fleets in turn

Requests go over persistent connections with one request in flight each, driven from a
selector, so a measured time is the server's answer, not connection setup or a thread switch.
"""

import argparse
import json
import math
import os
import re
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

PATH = "/api/v1/fleet"
now = time.perf_counter


class Conn:
    """One keep-alive HTTP/1.1 connection to 127.0.0.1:port, at most one request in flight."""

    def __init__(self, port):
        self.port = port
        self.sock = None
        self.connect()

    def connect(self):
        if self.sock is not None:
            self.sock.close()
        self.sock = socket.create_connection(("127.0.0.1", self.port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.closing = False

    def send(self, data):
        if self.closing:
            self.connect()
        self.sock.sendall(data)

    def receive(self):
        """Reads what is there (call when readable); a response once one is complete."""
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError(f"127.0.0.1:{self.port} closed the connection")
        self.buf += data
        return self.parse()

    def call(self, data):
        self.send(data)
        while True:
            r = self.receive()
            if r is not None:
                return r

    def parse(self):
        """(status, headers, body) of the response at the head of the buffer, or None."""
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return None
        lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        pos = end + 4
        if "content-length" in headers:
            stop = pos + int(headers["content-length"])
            if len(self.buf) < stop:
                return None
            body = bytes(self.buf[pos:stop])
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = bytearray()
            while True:
                eol = self.buf.find(b"\r\n", pos)
                if eol < 0:
                    return None
                size = int(bytes(self.buf[pos:eol]).split(b";")[0], 16)
                if len(self.buf) < eol + 2 + size + 2:
                    return None
                body += self.buf[eol + 2 : eol + 2 + size]
                pos = eol + 2 + size + 2
                if size == 0:
                    break
            stop, body = pos, bytes(body)
        else:
            stop, body = pos, b""
        del self.buf[:stop]
        self.closing = headers.get("connection", "").lower() == "close"
        return status, headers, body


def get_request(secret):
    return (f"GET {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {secret}\r\n\r\n").encode()


def code_of(status, body):
    """The documented error code of a refusal (`key_revoked`, `rate_limited`, …), or the status."""
    if status == 200:
        return "ok"
    try:
        return json.loads(body)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return str(status)


class Admin:
    """The admin API of one instance, over one persistent connection."""

    def __init__(self, port, token):
        self.conn, self.token = Conn(port), token

    def call(self, method, path, body=None):
        data = b"" if body is None else json.dumps(body).encode()
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {self.token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
        )
        status, _, resp = self.conn.call(head.encode() + data)
        if status >= 300:
            sys.exit(f"admin {method} {path}: {status} {resp[:300]!r}")
        return json.loads(resp) if resp else None

    def create(self, name, **fields):
        key = self.call("POST", "/v1/workspaces/bench/keys", {"name": name, "role": "bench", **fields})
        return key["secret"], key["id"]

    def revoke(self, key_id):
        return self.call("POST", f"/v1/workspaces/bench/keys/{key_id}/revoke")


def ready(port):
    """True when the instance's /readyz answers 200 and does not say degraded."""
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=1)
        s.sendall(b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        s.close()
        return data.startswith(b"HTTP/1.1 200") and b"degraded" not in data
    except OSError:
        return False


def wait_ready(fleet, timeout=30):
    deadline = now() + timeout
    while not all(ready(i["admin"]) for i in fleet["instances"]):
        if now() > deadline:
            sys.exit(f"{fleet['name']}: instances not ready after {timeout} s")
        time.sleep(0.1)


# Counters that explain a limit's overshoot: Redis calls that failed (a timeout under load, or
# the freeze), breaker openings, and checks decided on the instance's share of the limit.
DIAGNOSTICS = ("keygate_store_errors_total", "keygate_store_breaker_opens_total",
               "keygate_rate_limit_local_total")


def counters(fleet, names=DIAGNOSTICS):
    """Each named counter summed over labels and instances (absent ones are left out)."""
    total = {}
    for i in fleet["instances"]:
        c = Conn(i["admin"])
        _, _, body = c.call(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        c.sock.close()
        for line in body.decode().splitlines():
            name, _, value = line.partition(" ")
            name = name.split("{")[0]
            if name in names:
                total[name] = total.get(name, 0) + float(value.split()[0])
    return total


def delta(before, after):
    return {k.removeprefix("keygate_").removesuffix("_total"): int(after[k] - before.get(k, 0))
            for k in after}


def fleet_counts(instances):
    """Each instance's `keygate_fleet_instances`: how many live instances it counts."""
    return [counters({"instances": [i]}, ("keygate_fleet_instances",)).get("keygate_fleet_instances")
            for i in instances]


def wait_fleet_count(instances, want, timeout=15):
    deadline = now() + timeout
    while (seen := fleet_counts(instances)) != [want] * len(instances):
        if now() > deadline:
            sys.exit(f"instances count {seen} live instances, not {want}")
        time.sleep(0.2)


def pct(values, p):
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    v = sorted(values)
    return v[max(0, math.ceil(p / 100 * len(v)) - 1)]


def ms(seconds):
    return seconds * 1000.0


# ---------------------------------------------------------------- revocation


def wrk_load(fleet, secret, conns):
    """wrk on every instance with `secret`, running until stopped (the driver's own children)."""
    return [
        subprocess.Popen(
            ["wrk", "-t1", f"-c{conns}", "-d3600s", "-H", f"Authorization: Bearer {secret}",
             f"http://127.0.0.1:{i['proxy']}{PATH}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for i in fleet["instances"]
    ]


def stop(procs):
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait()


def revocation(fleet, token, rounds, load_conns):
    """Time from the revoke response to the first 401 on every other instance."""
    inst = fleet["instances"]
    admin = Admin(inst[0]["admin"], token)
    polls = [Conn(i["proxy"]) for i in inst]
    load, served = [], counters(fleet, ("keygate_requests_total",))
    started = now()
    if load_conns:
        load_secret, _ = admin.create("fleet-load")
        load = wrk_load(fleet, load_secret, load_conns)
        time.sleep(1)  # wrk connected and the load key cached everywhere
    out = {"rounds": rounds, "others": len(inst) - 1, "times": [], "revoke": [], "first_ok": 0,
           "served_after": 0, "timeouts": 0, "unexpected": {}, "confirmed": []}
    try:
        for r in range(rounds):
            secret, key_id = admin.create(f"fleet-revoke-{r}")
            req = get_request(secret)
            for c in polls:
                status, _, body = c.call(req)
                if status != 200:
                    sys.exit(f"warming a new key: {status} {body[:200]!r}")
            t0 = now()
            key = admin.revoke(key_id)
            t1 = now()
            out["revoke"].append(t1 - t0)
            prop = key.get("propagation") if isinstance(key, dict) else None
            if prop:
                out["confirmed"].append((prop.get("confirmed"), prop.get("instances")))
            sel = selectors.DefaultSelector()
            for c in polls[1:]:
                c.send(req)
                sel.register(c.sock, selectors.EVENT_READ, [c, True])
            pending, deadline = len(polls) - 1, t1 + 5.0
            while pending and now() < deadline:
                for skey, _ in sel.select(timeout=0.1):
                    c, first = skey.data
                    resp = c.receive()
                    if resp is None:
                        continue
                    t = now()
                    status, _, body = resp
                    skey.data[1] = False
                    if status == 200:
                        out["served_after"] += 1
                        out["first_ok"] += first
                        c.send(req)
                        continue
                    if status == 401:
                        out["times"].append(t - t1)
                    else:
                        code = code_of(status, body)
                        out["unexpected"][code] = out["unexpected"].get(code, 0) + 1
                    sel.unregister(c.sock)
                    pending -= 1
            for skey in list(sel.get_map().values()):  # still serving the key after 5 s
                out["timeouts"] += 1
                skey.data[0].connect()
            sel.close()
    finally:
        stop(load)
    after = counters(fleet, ("keygate_requests_total",))
    out["load_rps"] = (after["keygate_requests_total"] - served["keygate_requests_total"]) / (now() - started)
    return out


def revocation_summary(o):
    t = o["times"]
    s = {"n": len(t), "timeouts": o["timeouts"], "first_ok": o["first_ok"],
         "served_after": o["served_after"], "unexpected": o["unexpected"], "load_rps": o["load_rps"],
         "revoke_p50": ms(pct(o["revoke"], 50)), "revoke_p99": ms(pct(o["revoke"], 99))}
    if t:
        s.update(p50=ms(pct(t, 50)), p99=ms(pct(t, 99)), max=ms(max(t)))
    if o["confirmed"]:
        full = sum(1 for c, n in o["confirmed"] if c == n)
        s["confirmed"] = f"{full}/{len(o['confirmed'])} fully confirmed"
        c, n = min(o["confirmed"], key=lambda x: (x[0] or 0) / (x[1] or 1))
        s["confirmed_least"] = f"{c}/{n}"
    return s


# ---------------------------------------------------------------- flooding


def flood(ports, secret, conns_per_port, until, on_tick=None, stop_on=()):
    """Keeps one request in flight on each connection until `until()` is true; a connection
    that gets a refusal whose code is in `stop_on` sends no more. Counts answers by code."""
    req = get_request(secret)
    sel = selectors.DefaultSelector()
    conns = [Conn(p) for p in ports for _ in range(conns_per_port)]
    counts, first_send, last_ok_send = {}, now(), None
    for c in conns:
        c.sent_at = now()
        c.send(req)
        sel.register(c.sock, selectors.EVENT_READ, c)
    active = len(conns)
    while active:
        if on_tick:
            on_tick()
        for skey, _ in sel.select(timeout=0.002):
            c = skey.data
            resp = c.receive()
            if resp is None:
                continue
            status, _, body = resp
            code = code_of(status, body)
            counts[code] = counts.get(code, 0) + 1
            if code == "ok":
                last_ok_send = max(last_ok_send or 0, c.sent_at)
            if code in stop_on or until():
                sel.unregister(c.sock)
                c.sock.close()
                active -= 1
            else:
                c.sent_at = now()
                c.send(req)
    sel.close()
    return counts, first_send, last_ok_send


def freeze(pids, sig):
    for pid in pids:
        os.kill(pid, sig)


def freeze_label(seconds):
    if not seconds:
        return "steady"
    return f"Redis frozen {seconds * 1000:.0f} ms" if seconds < 1 else f"Redis frozen {seconds:g} s"


def global_limit(fleet, token, n, rate, burst, duration, conns, frozen):
    """Admitted requests of one key with a global limit, flooded through n instances; with
    `frozen` > 0, Redis (every process of the store) is stopped that many seconds mid-run."""
    inst, idle = fleet["instances"][:n], fleet["instances"][n:]
    # A fleet of n: the other instances are paused (SIGSTOP) until the rest stop counting them,
    # since a check decided locally takes the share 1/(live instances) of the limit.
    freeze([i["pid"] for i in idle], signal.SIGSTOP)
    try:
        wait_fleet_count(inst, n)
        return limit_run({**fleet, "instances": inst}, token, rate, burst, duration, conns, frozen)
    finally:
        freeze([i["pid"] for i in idle], signal.SIGCONT)
        if idle:
            wait_fleet_count(fleet["instances"], len(fleet["instances"]))


def limit_run(fleet, token, rate, burst, duration, conns, frozen):
    inst = fleet["instances"]
    n = len(inst)
    admin = Admin(inst[0]["admin"], token)
    secret, _ = admin.create(f"fleet-limit-{n}-{frozen:g}",
                             rate_limit={"requests": rate, "period": "1s", "burst": burst})
    for i in inst:  # cached everywhere, then the bucket fills up again
        c = Conn(i["proxy"])
        status, _, body = c.call(get_request(secret))
        if status != 200:
            sys.exit(f"warming the limited key: {status} {body[:200]!r}")
        c.sock.close()
    time.sleep(burst / rate + 0.3)

    before = counters(fleet)
    start = now()
    end = start + duration
    state = {"phase": 0}  # 0 before the freeze, 1 frozen, 2 thawed
    freeze_at = start + (duration - frozen) / 2

    def tick():
        if not frozen or state["phase"] == 2:
            return
        t = now()
        if state["phase"] == 0 and t >= freeze_at:
            freeze(fleet["redis_pids"], signal.SIGSTOP)
            state["phase"] = 1
        elif state["phase"] == 1 and t >= freeze_at + frozen:
            freeze(fleet["redis_pids"], signal.SIGCONT)
            state["phase"] = 2

    try:
        counts, first, last = flood([i["proxy"] for i in inst], secret, conns, lambda: now() >= end, tick)
    finally:
        if frozen and state["phase"] == 1:
            freeze(fleet["redis_pids"], signal.SIGCONT)
    admitted = counts.get("ok", 0)
    during = delta(before, counters(fleet))
    elapsed = (last or first) - first
    allowed = burst + rate * elapsed
    if frozen:
        time.sleep(1)
        wait_ready(fleet)
    return {"n": n, "frozen": frozen, "rate": rate, "burst": burst, "elapsed": elapsed,
            "admitted": admitted, "allowed": allowed, "ratio": admitted / allowed, "counts": counts, "store": during,
            "offered": sum(counts.values()) / max(elapsed, 1e-9)}


def quota(fleet, token, limit, conns):
    inst = fleet["instances"]
    admin = Admin(inst[0]["admin"], token)
    secret, _ = admin.create("fleet-quota", quota={"limit": limit, "refill": "none"})
    t0 = now()
    counts, _, _ = flood([i["proxy"] for i in inst], secret, conns, lambda: now() - t0 > 60,
                         stop_on=("quota_exceeded",))
    return {"limit": limit, "admitted": counts.get("ok", 0), "counts": counts,
            "exact": counts.get("ok", 0) == limit}


# ---------------------------------------------------------------- throughput

WRK_SCRIPT = """local keys = {%s}
local i = 0
request = function()
  i = i %% #keys + 1
  wrk.headers["Authorization"] = keys[i]
  return wrk.format(nil)
end
"""


def parse_wrk(text):
    def to_ms(v, unit):
        return float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    lat = {m.group(1): to_ms(m.group(2), m.group(3))
           for m in re.finditer(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)}
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    return {"rps": rps, "p50": lat["50"], "p99": lat["99"], "non2xx": int(bad.group(1)) if bad else 0}


def wrk_all(fleet, script, seconds, conns):
    procs = [
        subprocess.Popen(["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency", "-s", script,
                          f"http://127.0.0.1:{i['proxy']}{PATH}"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in fleet["instances"]
    ]
    return [parse_wrk(p.communicate()[0]) for p in procs]


def throughput(fleets, token, rounds, seconds, conns, keys, workdir):
    scripts = {}
    for f in fleets:
        admin = Admin(f["instances"][0]["admin"], token)
        secrets = [admin.create(f"fleet-tp-{k}")[0] for k in range(keys)]
        scripts[f["name"]] = os.path.join(workdir, f"keys-{f['name']}.lua")
        with open(scripts[f["name"]], "w") as out:
            out.write(WRK_SCRIPT % ",".join(f'"Bearer {s}"' for s in secrets))
        wrk_all(f, scripts[f["name"]], 2, conns)  # every key cached on every instance
    runs = {f["name"]: [] for f in fleets}
    for r in range(rounds):
        for f in fleets:
            res = wrk_all(f, scripts[f["name"]], seconds, conns)
            runs[f["name"]].append(res)
            print(f"  round {r + 1} {f['name']:<8} req/s per instance "
                  + " ".join(f"{x['rps']:>8.0f}" for x in res)
                  + f"  total {sum(x['rps'] for x in res):>8.0f}"
                  + "  p99 ms " + " ".join(f"{x['p99']:.2f}" for x in res), flush=True)
            if any(x["non2xx"] for x in res):
                print(f"  warning: non-2xx answers in {f['name']} round {r + 1}", flush=True)
    out = {}
    for name, rs in runs.items():
        n = len(rs[0])
        out[name] = {
            "per_instance": [statistics.median(r[i]["rps"] for r in rs) for i in range(n)],
            "total": statistics.median(sum(x["rps"] for x in r) for r in rs),
            "p99": statistics.median(max(x["p99"] for x in r) for r in rs),
            "non2xx": sum(x["non2xx"] for r in rs for x in r),
        }
    return out


# ---------------------------------------------------------------- summary


def limit_note(store):
    """What the instances counted during a limit run, when it explains an overshoot."""
    local, errors = store.get("rate_limit_local", 0), store.get("store_errors", 0)
    if local:
        return f", {local} decided locally"
    return f", {errors} store errors" if errors else ""


def summary(results, fleets):
    names = [f["name"] for f in fleets]
    rows = []

    def row(label, fn):
        rows.append([label] + [fn(results[n]) if n in results else "" for n in names])

    def get(*path):
        def fn(r):
            for p in path:
                if not isinstance(r, dict) or p not in r:
                    return "-"
                r = r[p]
            return r
        return fn

    for phase in ("idle", "loaded"):
        key = f"revocation_{phase}"
        row(f"revocation {phase}: first 401 after the response, p50/p99/max ms",
            lambda r, k=key: "-" if k not in r or "p50" not in r[k]
            else f"{r[k]['p50']:.2f} / {r[k]['p99']:.2f} / {r[k]['max']:.2f}")
        row("  requests/s through the fleet during the rounds",
            lambda r, k=key: "-" if k not in r else f"{r[k]['load_rps']:.0f}")
        row("  answers 200 after the response (first requests / all)",
            lambda r, k=key: "-" if k not in r else f"{r[k]['first_ok']} / {r[k]['served_after']}")
        row("  revoke call p50/p99 ms",
            lambda r, k=key: "-" if k not in r else f"{r[k]['revoke_p50']:.2f} / {r[k]['revoke_p99']:.2f}")
        row("  revoke responses confirmed by every instance", get(key, "confirmed"))
        row("  instances still serving the key 5 s later", get(key, "timeouts"))
    for lim in next((results[n].get("limits", []) for n in names if n in results), []):
        label = f"global limit, {lim['n']} instances, {freeze_label(lim['frozen'])}"
        row(f"{label}: admitted / allowed",
            lambda r, l=lim: next((f"{x['ratio']:.3f} ({x['admitted']} / {x['allowed']:.0f})"
                                   + limit_note(x["store"])
                                   for x in r.get("limits", []) if (x["n"], x["frozen"]) == (l["n"], l["frozen"])), "-"))
    row("quota: admitted / limit", lambda r: "-" if "quota" not in r else
        f"{r['quota']['admitted']} / {r['quota']['limit']}" + (" exact" if r["quota"]["exact"] else " NOT EXACT"))
    row("throughput req/s per instance (median of rounds)", lambda r: "-" if "throughput" not in r else
        " / ".join(f"{x:.0f}" for x in r["throughput"]["per_instance"]))
    row("throughput req/s, all instances", lambda r: "-" if "throughput" not in r else
        f"{r['throughput']['total']:.0f}")
    rows = [r for r in rows if any(v not in ("", "-") for v in r[1:])]
    width = max(len(r[0]) for r in rows)
    cols = [max(len(str(r[i + 1])) for r in rows + [[""] + names]) for i in range(len(names))]
    print(f"{'':<{width}}  " + "  ".join(f"{n:>{w}}" for n, w in zip(names, cols)))
    for r in rows:
        print(f"{r[0]:<{width}}  " + "  ".join(f"{str(v):>{w}}" for v, w in zip(r[1:], cols)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fleets", required=True, help="JSON written by benches/fleet/run")
    ap.add_argument("--only", default="revocation,limit,quota,throughput")
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--load-connections", type=int, default=8)
    ap.add_argument("--rate", type=int, default=200)
    ap.add_argument("--burst", type=int, default=20)
    ap.add_argument("--limit-duration", type=float, default=10)
    ap.add_argument("--freezes", default="0.06,1", help="seconds Redis is frozen in the extra limit runs")
    ap.add_argument("--flood-connections", type=int, default=4)
    ap.add_argument("--quota", type=int, default=2000)
    ap.add_argument("--tp-rounds", type=int, default=3)
    ap.add_argument("--tp-duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--keys", type=int, default=100)
    ap.add_argument("--json")
    a = ap.parse_args()
    desc = json.load(open(a.fleets))
    fleets, token, only = desc["fleets"], desc["token"], set(a.only.split(","))
    results = {f["name"]: {} for f in fleets}
    for f in fleets:
        name, n = f["name"], len(f["instances"])
        wait_ready(f)
        if "revocation" in only and n > 1:
            for phase, conns in (("idle", 0), ("loaded", a.load_connections)):
                print(f"== {name}: revocation {phase}, {a.rounds} rounds, {n} instances"
                      + (f" (wrk -c{conns} on each with another key)" if conns else ""), flush=True)
                s = revocation_summary(revocation(f, token, a.rounds, conns))
                results[name][f"revocation_{phase}"] = s
                print("  " + json.dumps(s), flush=True)
        if "limit" in only:
            cases = [(k, frozen) for frozen in [0.0] + [float(x) for x in a.freezes.split(",") if x]
                     for k in sorted({min(2, n), n})]
            results[name]["limits"] = []
            for k, frozen in cases:
                print(f"== {name}: global limit {a.rate}/s burst {a.burst}, {k} instances, "
                      f"{a.limit_duration:g} s, {freeze_label(frozen)}", flush=True)
                lim = global_limit(f, token, k, a.rate, a.burst, a.limit_duration, a.flood_connections, frozen)
                results[name]["limits"].append(lim)
                print(f"  admitted {lim['admitted']} / allowed {lim['allowed']:.1f} = {lim['ratio']:.4f}; "
                      f"offered {lim['offered']:.0f}/s; answers {lim['counts']}; store {lim['store']}", flush=True)
        if "quota" in only:
            print(f"== {name}: quota {a.quota} (refill: none), {n} instances × {a.flood_connections} connections",
                  flush=True)
            q = quota(f, token, a.quota, a.flood_connections)
            results[name]["quota"] = q
            print(f"  admitted {q['admitted']} of {q['limit']}; answers {q['counts']}", flush=True)
    if "throughput" in only:
        print(f"== throughput: wrk -t1 -c{a.connections} on every instance at once, {a.keys} keys in rotation, "
              f"{a.tp_rounds} rounds × {a.tp_duration} s, fleets in turn", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            for name, t in throughput(fleets, token, a.tp_rounds, a.tp_duration, a.connections, a.keys, tmp).items():
                results[name]["throughput"] = t
    print("\n== summary")
    summary(results, fleets)
    if a.json:
        with open(a.json, "w") as out:
            json.dump(results, out, indent=2)


if __name__ == "__main__":
    main()
