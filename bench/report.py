#!/usr/bin/env python3
"""Turn the raw results of bench/run.sh into the RESULTS.md table.

    python3 bench/report.py RAW_DIR OUT.md

RAW_DIR holds:
  latency-T-R.json, throughput-T-R.json, cpu-T-R.json  oha outputs, per target T
                                                        (direct, nginx, gateway)
                                                        and round R
  streams-T.json        stream_clients.py outputs (T = nginx, gateway)
  metrics.txt           "key value" lines written by run.sh (a key repeats
                        once per round)
  machine.txt           "key value" lines: machine, versions, command
The table is also printed.
"""

import json
import os
import statistics
import sys

TARGETS = ("direct", "nginx", "gateway")
PROXIES = ("nginx", "gateway")
PHASES = ("latency", "throughput", "cpu", "streams")
DASH = "—"


# --- reading -----------------------------------------------------------------

def read_kv(path):
    """"key value" lines -> ({key: last value}, {key: [every value]})."""
    last, every = {}, {}
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if line:
                key, _, value = line.partition(" ")
                last[key] = value
                every.setdefault(key, []).append(value)
    return last, every


def load_json(path):
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return None
    with open(path) as f:
        return json.load(f)


def rounds(raw, test, target):
    """oha outputs of every round of one test for one target, in round order."""
    out, r = [], 1
    while os.path.exists(os.path.join(raw, f"{test}-{target}-{r}.json")):
        out.append(load_json(os.path.join(raw, f"{test}-{target}-{r}.json")))
        r += 1
    return out


def ok_rate(oha_runs):
    """Share of requests answered 2xx over runs. oha's own successRate counts
    any HTTP answer (a 502 too) as a success, so it is recomputed here."""
    good = total = 0
    for d in oha_runs:
        statuses = d.get("statusCodeDistribution", {})
        total += sum(statuses.values()) + sum(d.get("errorDistribution", {}).values())
        good += sum(n for code, n in statuses.items() if code.startswith("2"))
    return good / total if total else 0.0


def answered(oha_run):
    """Requests oha made in one run: every HTTP answer and every error."""
    return sum(oha_run.get("statusCodeDistribution", {}).values()) + sum(
        oha_run.get("errorDistribution", {}).values())


# --- formatting ----------------------------------------------------------------

class Series:
    """Per-round values of one metric; the median round is the figure."""

    def __init__(self, values):
        self.values = [v for v in values if v is not None]

    @property
    def median(self):
        return statistics.median(self.values) if self.values else None

    def cell(self, digits):
        if not self.values:
            return DASH
        text = f"{self.median:.{digits}f}"
        if len(self.values) > 1:
            text += f" ({min(self.values):.{digits}f}–{max(self.values):.{digits}f})"
        return text


def verdict(ok, detail=""):
    word = "**yes**" if ok else "**NO**"
    return f"{word} ({detail})" if detail else word


# --- the report ------------------------------------------------------------------

def main():
    raw, out_path = sys.argv[1], sys.argv[2]
    m, m_all = read_kv(os.path.join(raw, "metrics.txt"))
    machine, _ = read_kv(os.path.join(raw, "machine.txt"))

    lat = {t: rounds(raw, "latency", t) for t in TARGETS}
    tp = {t: rounds(raw, "throughput", t) for t in TARGETS}
    cpu_runs = {t: rounds(raw, "cpu", t) for t in TARGETS}
    streams = {t: load_json(os.path.join(raw, f"streams-{t}.json")) or {} for t in PROXIES}

    # Latency percentiles in ms, per round. Overheads pair each proxy's round
    # with the direct run of the same round (taken seconds apart).
    def pct(t, p):
        return [d["latencyPercentiles"][p] * 1000 for d in lat[t]]

    p50 = {t: Series(pct(t, "p50")) for t in TARGETS}
    p99 = {t: Series(pct(t, "p99")) for t in TARGETS}
    over50 = {t: Series([a - b for a, b in zip(pct(t, "p50"), pct("direct", "p50"))]) for t in PROXIES}
    over99 = {t: Series([a - b for a, b in zip(pct(t, "p99"), pct("direct", "p99"))]) for t in PROXIES}
    lat_ok = {t: ok_rate(lat[t]) for t in TARGETS}

    rps = {t: Series([d["summary"]["requestsPerSec"] for d in tp[t]]) for t in TARGETS}
    tp_ok = {t: ok_rate(tp[t]) for t in TARGETS}

    # CPU: utime+stime ticks per round -> µs per request.
    hz, n_req = int(m["clk_tck"]), int(m["cpu_requests"])
    cpu = {t: Series([int(v) / hz / n_req * 1e6 for v in m_all[f"cpu_ticks_{t}"]]) for t in TARGETS}
    cpu_ok = {t: ok_rate(cpu_runs[t]) for t in TARGETS}
    # The same at the latency test's fixed rate: that round's ticks over the
    # requests oha made in it (older raw results have no such ticks).
    cpu_rate = {
        t: Series([int(v) / hz / answered(d) * 1e6
                   for v, d in zip(m_all.get(f"cpu_ticks_rate_{t}", []), lat[t]) if answered(d)])
        for t in TARGETS
    }

    mib = lambda key: int(m[key]) / 1024  # noqa: E731
    rest = {t: mib(f"rss_rest_kib_{t}") for t in PROXIES}
    peak = {t: mib(f"rss_peak_kib_{t}") for t in PROXIES}
    per_stream = {t: streams[t].get("per_stream_kib") for t in PROXIES}
    live = {t: streams[t].get("live", 0) for t in PROXIES}
    asked = {t: streams[t].get("requested", 0) for t in PROXIES}

    rows = []

    def row(name, d, n, g, target=DASH, passed=DASH):
        rows.append(f"| {name} | {d} | {n} | {g} | {target} | {passed} |")

    # a. latency
    row(f"Latency p50 at {m['lat_rate']} req/s (ms)", *(p50[t].cell(3) for t in TARGETS))
    ok = over50["gateway"].median is not None and over50["gateway"].median <= 0.15
    row("↳ p50 overhead vs direct (ms)", DASH, over50["nginx"].cell(3), over50["gateway"].cell(3),
        "gateway ≤ 0.15 ms", verdict(ok and lat_ok["gateway"] == 1.0))
    row("Latency p99 (ms)", *(p99[t].cell(3) for t in TARGETS))
    ok = over99["gateway"].median is not None and over99["gateway"].median <= 0.5
    row("↳ p99 overhead vs direct (ms)", DASH, over99["nginx"].cell(3), over99["gateway"].cell(3),
        "gateway ≤ 0.5 ms", verdict(ok and lat_ok["gateway"] == 1.0))

    # b. throughput
    tp_ratio = rps["gateway"].median / rps["nginx"].median
    row(f"Throughput, {m['tp_conn']} connections (req/s)", *(rps[t].cell(0) for t in TARGETS),
        "gateway ≥ 50% of nginx", verdict(tp_ratio >= 0.5 and tp_ok["gateway"] == 1.0, f"{tp_ratio:.0%}"))
    row("↳ 2xx success rate", *(f"{tp_ok[t]:.2%}" for t in TARGETS))

    # c. CPU
    cpu_ratio = cpu["gateway"].median / cpu["nginx"].median
    row("CPU per request (µs, the process's own user+sys)", cpu["direct"].cell(1) + " ¹",
        cpu["nginx"].cell(1) + " ²", cpu["gateway"].cell(1), "gateway ≤ 2× nginx",
        verdict(cpu_ratio <= 2.0 and cpu_ok["gateway"] == 1.0, f"{cpu_ratio:.2f}×"))

    if cpu_rate["gateway"].median is not None and cpu_rate["nginx"].median:
        rate_ratio = cpu_rate["gateway"].median / cpu_rate["nginx"].median
        row(f"↳ the same at {m['lat_rate']} req/s (µs)", cpu_rate["direct"].cell(1) + " ¹",
            cpu_rate["nginx"].cell(1) + " ²", cpu_rate["gateway"].cell(1), "gateway ≤ 2× nginx",
            verdict(rate_ratio <= 2.0 and lat_ok["gateway"] == 1.0, f"{rate_ratio:.2f}×"))

    # d. memory
    row("RSS at rest (MiB)", DASH, f"{rest['nginx']:.1f} ²", f"{rest['gateway']:.1f}",
        "gateway ≤ 30 MiB", verdict(rest["gateway"] <= 30))
    row("Peak RSS after all tests (MiB, VmHWM)", DASH, f"{peak['nginx']:.1f} ²", f"{peak['gateway']:.1f}")

    # e. streams
    if per_stream["nginx"] and per_stream["gateway"] is not None:
        ratio = per_stream["gateway"] / per_stream["nginx"]
        stream_pass = verdict(ratio <= 2.0 and live["gateway"] == asked["gateway"], f"{ratio:.2f}×")
    else:
        stream_pass = verdict(False, "test failed")
    fmt = lambda v: DASH if v is None else f"{v:.1f}"  # noqa: E731
    row(f"RSS per open stream (KiB, {asked['gateway']} streams)", DASH, fmt(per_stream["nginx"]) + " ²",
        fmt(per_stream["gateway"]), "gateway ≤ 2× nginx", stream_pass)
    row("↳ streams that got their first event", DASH, f"{live['nginx']}/{asked['nginx']}",
        f"{live['gateway']}/{asked['gateway']}")

    # --- warnings ---------------------------------------------------------------
    warnings = []
    for p in PHASES:
        other = float(m.get(f"other_cpu_pct_{p}", 0))
        if other > 5:
            warnings.append(
                f"- Other processes used {other:.0f}% of the machine's CPU during the {p} test: "
                "its numbers are skewed; run again on a quiet machine."
            )
    for name, rates in (("latency", lat_ok), ("throughput", tp_ok), ("CPU", cpu_ok)):
        for t, r in rates.items():
            if r != 1.0:
                warnings.append(f"- {t}: only {r:.2%} of the {name} test's requests were answered 2xx.")
    for t in PROXIES:
        if streams[t].get("errors"):
            warnings.append(f"- {t} streams: {streams[t]['errors']}")

    lines = [
        "# Benchmark results",
        "",
        f"- Date: {machine.get('date')}",
        f"- Machine: {machine.get('nproc')} CPUs ({machine.get('cpu_model')}), "
        f"{machine.get('memory')} RAM, Linux {machine.get('kernel')}",
        f"- Gateway: {machine.get('gateway_version')} (work tree at commit {machine.get('git_rev')}); "
        f"{machine.get('nginx_version')}; load generator {machine.get('oha_version')}",
        f"- Command: `{machine.get('command')}`",
        f"- Settings: {machine.get('settings')}; whole run {m.get('elapsed_seconds', '?')} s",
        "- CPU used by other processes on the machine during each test (share of all CPUs): "
        + ", ".join(f"{p} {m.get(f'other_cpu_pct_{p}', '?')}%" for p in PHASES)
        + "; stolen by the hypervisor: "
        + ", ".join(f"{p} {m.get(f'steal_pct_{p}', '?')}%" for p in PHASES),
        "",
        "| metric | direct | nginx | gateway | target | pass? |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        "Each figure is the median round, with the range over rounds in brackets. "
        "Overheads pair each proxy round with the direct run of the same round. "
        "The pass checks also require every request of the test to be answered 2xx.  ",
        "¹ The mock upstream's own CPU per request (nginx answering with `return 200`): "
        "the floor any proxy adds to.  ",
        "² nginx figures are summed over its master and worker processes.",
        "",
        "Everything (load generator, proxies, upstreams) shares this one machine, "
        "so absolute numbers only compare within one run.",
    ]
    if warnings:
        lines += ["", "**Warnings**", "", *warnings]
    text = "\n".join(lines) + "\n"
    with open(out_path, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
