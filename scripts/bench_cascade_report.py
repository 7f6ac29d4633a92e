"""The cascade section of BENCHMARKS.md from bench_cascade.sh's JSON reports:
the three-unit cascade against the same exit policy computed in one process.
usage: bench_cascade_report.py RUNS_DIR SECONDS REPEATS"""
import glob
import json
import os
import statistics
import sys

runs, seconds, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3])


def reports(label, c):
    return [json.load(open(p)) for p in sorted(glob.glob(os.path.join(runs, f"{label}-c{c}-r*.json")))]


def summary(values):
    return statistics.median(values), min(values), max(values)


def cell(values):
    m, lo, hi = summary(values)
    return f"{m:.1f} ({lo:.1f}-{hi:.1f})"


def throughput(rs):
    return [r["throughput_rps"] for r in rs]


def p50(rs):
    return [(r["latency_ms"] or {}).get("p50", 0.0) for r in rs]


def exits(rs):
    total = {}
    for r in rs:
        for e, n in {**r["exits"], **r["local_exits"]}.items():
            total[e] = total.get(e, 0) + n
    answered = sum(total.values()) or 1
    return "/".join(f"{100 * total.get(e, 0) / answered:.0f}%" for e in ("8", "12", "16"))


def errors(rs):
    return sum(sum(r["errors"].values()) for r in rs)


print("## Cascade against the same exit policy in one process\n")
print("Three units on loopback chained exit 8 -> 12 -> 16 (`scripts/cascade.sh`, random weights, the demo's "
      "thresholds for exits 8 and 12 so that answers come from every exit), in two layouts: broker (each unit a "
      "transmission unit and a computation unit, RabbitMQ between them) and direct (each unit one "
      "`computation-unit serve` process, no broker). Driven by `test-unit` (closed loop, synthetic images, the same "
      "inputs every run). In process: `test-unit -e 8,12,16` with the same thresholds, weights and inputs: the same "
      "exits computed by three engines in one process (batching as the units), no network. One libtorch thread per "
      "unit and per in-process engine: three of each share the 2 CPUs. Median of "
      f"{repeats} runs of {seconds} s (range); ratios divide medians by the in-process median.\n")
print("| concurrency | layout | cascade answers/s | in process answers/s | ratio | cascade p50 ms | in process p50 ms | "
      "ratio | answers at exits 8/12/16 (cascade) | (in process) |")
print("|---|---|---|---|---|---|---|---|---|---|")
for c in (1, 4, 16):
    local = reports("in-process", c)
    for layout, label in (("broker", "one-thread"), ("direct", "direct-one-thread")):
        casc = reports(label, c)
        if not casc or not local:
            continue
        ratio_rps = summary(throughput(casc))[0] / summary(throughput(local))[0]
        ratio_p50 = summary(p50(casc))[0] / summary(p50(local))[0]
        err = errors(casc) + errors(local)
        print(f"| {c}{f' ({err} errors)' if err else ''} | {layout} | {cell(throughput(casc))} | "
              f"{cell(throughput(local))} | {ratio_rps:.2f} | {cell(p50(casc))} | {cell(p50(local))} | "
              f"{ratio_p50:.2f} | {exits(casc)} | {exits(local)} |")
print()
for layout, label in (("broker", "one-thread"), ("direct", "direct-one-thread")):
    hops = reports(label, 1)[0]["hops"] if reports(label, 1) else []
    if hops:
        print(f"Mean per-hop split of the first {layout} run at concurrency 1 (ms):\n")
        print("| hop | unit | answers | queue wait | compute | network |")
        print("|---|---|---|---|---|---|")
        for h in hops:
            print(f"| {h['hop']} | {h['unit']} | {h['count']} | {h['queue_wait_ms']:.2f} | {h['compute_ms']:.2f} | "
                  f"{h['network_ms']:.2f} |")
        print()
print("### Three units with default settings\n")
print("The same cascade with each computation unit on its default threads (the CPUs it may use: "
      f"{os.cpu_count()} here, so three units want {3 * os.cpu_count()} threads on {os.cpu_count()} CPUs), with "
      "the default batching and with batching off (`--max-batch-size 1`, one request per forward as before "
      "batching existed), in the same run.\n")
print("| concurrency | batching: answers/s | p50 ms | no batching: answers/s | p50 ms |")
print("|---|---|---|---|---|")
for c in (1, 4, 16):
    on, off = reports("default", c), reports("unbatched", c)
    if on and off:
        err = errors(on) + errors(off)
        print(f"| {c}{f' ({err} errors)' if err else ''} | {cell(throughput(on))} | {cell(p50(on))} | "
              f"{cell(throughput(off))} | {cell(p50(off))} |")
print()
