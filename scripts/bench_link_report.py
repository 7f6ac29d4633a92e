"""The link section of BENCHMARKS.md from bench_link.sh's runs (test-unit JSON
reports and WAN byte counts), and its plot, docs/bench-link.svg.
usage: bench_link_report.py OUT_DIR LAN_RATE LAN_RTT_MS WAN_RATE WAN_RTT_MS REQUESTS REPEATS"""
import datetime
import glob
import json
import os
import statistics
import sys

out, lan_rate, lan_rtt, wan_rate, wan_rtt, requests, repeats = sys.argv[1:8]
SCENARIOS = [  # (runs' label, table row, plot label, the WAN in plan's prediction)
    ("a-cloud", "(a) all in the cloud: raw image to a 0->16 unit", "(a) all in the cloud", "client"),
    ("b-edge-f32", "(b) edge 0->8, cloud 8->16, f32 wire", "(b) edge, f32 wire", 0),
    ("c-edge-f16", "(c) edge 0->8, cloud 8->16, f16 wire", "(c) edge, f16 wire", 0),
    ("d-device-4", "(d) device exit 4, edge 4->8, cloud 8->16, f32 wire", "(d) device exit 4", 1),
]
NETEM = os.environ.get("DNET_LINK_NETEM", "unknown")
PLOT = "docs/bench-link.svg"


def runs(label):
    found = []
    for path in sorted(glob.glob(os.path.join(out, "runs", f"{label}-r*.json"))):
        report = json.load(open(path))
        wan = int(open(path[: -len(".json")] + ".wan").read())
        found.append((report, wan))
    return found


def cell(values, digits=1):
    m = statistics.median(values)
    return m, f"{m:.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def exits(reports):
    total = {}
    for r in reports:
        for where, counts in (("device", r["local_exits"]), ("", r["exits"])):
            for e, n in counts.items():
                key = f"{e}{' (device)' if where else ''}"
                total[key] = total.get(key, 0) + n
    answered = sum(total.values()) or 1
    return ", ".join(f"{k}: {100 * n / answered:.0f}%" for k, n in sorted(total.items(), key=lambda kv: int(kv[0].split()[0])))


def predictions(label):
    """test-unit plan's prediction of each run (the same images and thresholds)."""
    return [json.load(open(p))[0] for p in sorted(glob.glob(os.path.join(out, "plan", f"{label}-r*.json")))]


rows, bars, checks = [], [], []
for label, title, short, wan_link in SCENARIOS:
    found = runs(label)
    if not found:
        continue
    reports = [r for r, _ in found]
    errors = sum(sum(r["errors"].values()) for r in reports)
    kb = [wan / 1024 / max(r["answered"] + r["local"], 1) for r, wan in found]
    (kb_median, kb_cell), (p50_median, p50_cell) = cell(kb), cell([r["latency_ms"]["p50"] for r in reports])
    _, p90_cell = cell([r["latency_ms"]["p90"] for r in reports])
    rows.append(f"| {title}{f' ({errors} errors)' if errors else ''} | {kb_cell} | {p50_cell} | {p90_cell} | "
                f"{exits(reports)} |")
    bars.append((short, kb_median, p50_median))
    planned = predictions(label)
    if planned:
        wan_kb = [(p["client_bytes"] if wan_link == "client" else p["link_bytes"][wan_link]) / 1024 for p in planned]
        measured_mean, predicted_mean = cell([r["latency_ms"]["mean"] for r in reports]), cell([p["mean_ms"] for p in planned])
        checks.append(f"| {short} | {measured_mean[1]} | {predicted_mean[1]} | "
                      f"{predicted_mean[0] / measured_mean[0]:.2f} | {p50_cell} | {cell([p['p50_ms'] for p in planned])[1]} | "
                      f"{kb_cell} | {cell(wan_kb)[1]} |")

now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
print("## Across a slow link (`make bench-link`)\n")
print(f"Measured {now}. The end device, the edge unit and the cloud unit each in their own network namespace "
      f"(`scripts/bench_link.sh`), joined by veth pairs: device-edge {lan_rate} with {lan_rtt} ms round trip "
      f"(LAN), edge-cloud and device-cloud {wan_rate} with {wan_rtt} ms round trip (WAN). The rate is a tc tbf "
      "qdisc on each veth end; the round trip a delay line in front of each unit (`scripts/delay_line.py`, half "
      "each way" + ("; this machine's kernel has no sch_netem" if NETEM == "no" else "") + "). "
      "Units are direct units (`computation-unit serve`), one libtorch thread each, random weights; everything "
      f"shares this machine's {os.cpu_count()} CPUs. Exit thresholds inside the random weights' confidence range "
      "(near 0.1) so that some answers come from the device's and the edge's exits. `test-unit` at concurrency 1, "
      f"{requests} synthetic images per run; median of {repeats} runs (range). WAN bytes: both directions of "
      "both WAN links, from the interfaces' counters (TCP/IP and HTTP/2 included), divided by the answers.\n")
print("| layout | KiB over the WAN per answer | p50 ms | p90 ms | answers by exit |")
print("|---|---|---|---|---|")
print("\n".join(rows))
print(f"\n![WAN bytes and latency per answer]({PLOT})\n")
if checks:
    times = json.load(open(os.path.join(out, "plan", "times.json")))
    print("**`test-unit plan` against these runs.** The same layouts predicted from per-layer times measured "
          f"here ({times['measured_on']}; whole network {sum(times['trunk_ms']) + times['head_ms'][-1]:.1f} ms), "
          "the links' rates and round trips, and where each run's images exit under the units' thresholds "
          "(`test-unit calibrate --thresholds`). Medians of the runs (range). The prediction's bytes are "
          "the requests' payloads one way; the measured ones count TCP/IP, HTTP/2 and answers both ways.\n")
    print("| layout | mean ms measured | mean ms predicted | predicted / measured | p50 ms measured | "
          "p50 ms predicted | KiB over the WAN measured | predicted |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(checks) + "\n")

# The plot: two bar charts side by side, one bar per layout.
width, height, left, bar_h, gap = 760, 60 + 44 * len(bars), 40, 26, 18
panel = (width - 2 * left) // 2 - 20
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
       f'<rect width="{width}" height="{height}" fill="white"/>']
for column, (heading, index, unit) in enumerate((("KiB over the WAN per answer", 1, "KiB"), ("p50 latency", 2, "ms"))):
    x0 = left + column * (panel + 40)
    svg.append(f'<text x="{x0}" y="20" font-weight="bold">{heading}</text>')
    top = max((b[index] for b in bars), default=1) or 1
    for i, bar in enumerate(bars):
        y = 36 + i * (bar_h + gap)
        length = max(1, int((panel - 60) * bar[index] / top))
        svg.append(f'<text x="{x0}" y="{y + 12}">{bar[0]}</text>')
        svg.append(f'<rect x="{x0}" y="{y + 16}" width="{length}" height="{bar_h - 12}" fill="#4472c4"/>')
        svg.append(f'<text x="{x0 + length + 4}" y="{y + 26}">{bar[index]:.1f} {unit}</text>')
svg.append("</svg>")
open(PLOT, "w").write("\n".join(svg) + "\n")
