"""The BENCHMARKS.md section on early exit's value, from the runs of
scripts/bench_trained.sh in OUT_DIR (test-unit JSON reports, --answers lines,
unit 8's metrics). Every figure is read from those files.
usage: bench_trained_report.py OUT_DIR"""
import datetime, json, os, re, sys

out = sys.argv[1]


def report(name):
    return json.load(open(os.path.join(out, f"{name}.json")))


def answers(name):
    return [json.loads(line) for line in open(os.path.join(out, f"{name}.jsonl"))]


def metric(name, series, label=None):
    """The value of `series` (with `label`, e.g. 'outcome="agreed"') in unit 8's scrape; 0 when absent."""
    text = open(os.path.join(out, f"{name}.metrics")).read() if os.path.exists(os.path.join(out, f"{name}.metrics")) else ""
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"{series}(?:\{{(.*)\}})? (\S+)$", line)
        if m and (label is None or label in (m.group(1) or "").split(",")):
            total += float(m.group(2))
    return total


meta = json.load(open(os.path.join(out, "meta.json")))
measured = datetime.datetime.fromtimestamp(os.path.getmtime(os.path.join(out, "meta.json")), datetime.timezone.utc)
records = meta["records"]
# Exit 16 alone's category per test image (request i sends image i mod records).
reference = {
    l["request"] % records: l["categories"][0] for l in answers("value-exit16-c1") if l.get("exits") == [16]
}


def agreement(name):
    """Of the answered requests of run `name`: the share whose category is exit 16 alone's."""
    pairs = [(l["categories"][0], reference.get(l["request"] % records)) for l in answers(name) if "categories" in l]
    return sum(a == b for a, b in pairs) / len(pairs) if pairs else float("nan")


def exits(r):
    total = sum(r["exits"].values())
    return " / ".join(f"{100 * r['exits'].get(str(e), 0) / total:.0f}%" for e in (8, 12, 16))


def pct(x):
    return f"{100 * x:.1f} %"


cal = json.load(open(os.path.join(out, "calibration.json")))
thresholds = open(os.path.join(out, "calibrated.txt")).read().strip().split(",")
lines = [
    "## Early exit on real data (the trained demo model)",
    "",
    f"Measured {measured:%Y-%m-%d %H:%M UTC} on {os.cpu_count()} CPUs. "
    f"The demo model trained on scikit-learn's digits (`make demo-trained`; {records} test images, upscaled to "
    f"3x32x32), cascade 8 -> 12 -> 16 ({meta['layout']} layout on one machine, one libtorch thread per unit, unit 8 alone on "
    "CPU 0 and units 12 and 16 on the others, as if unit 8 were a device of its own), thresholds calibrated by "
    f"`test-unit calibrate --target-agreement 0.99` on the validation set: exit 8 {float(thresholds[7]):.4f}, "
    f"exit 12 {float(thresholds[11]):.4f}. Each run sends the test set twice; agreement is with exit 16 alone's "
    "answer for the same image (`scripts/bench_trained.sh`, `scripts/bench_trained_report.py`).",
    "",
    "### The calibrated cascade against exit 16 alone",
    "",
    "Exit 16 alone: the same units with every threshold at 1.",
    "",
    "| concurrency | thresholds | accuracy | agreement with exit 16 | mean ms | p50 ms | p99 ms | answers/s "
    "| answered at 8 / 12 / 16 | compute ms per answer |",
    "|---|---|---|---|---|---|---|---|---|---|",
]
headline = []
for c in (1, 16):
    rows = {}
    for policy in ("calibrated", "exit16"):
        r = report(f"value-{policy}-c{c}")
        rows[policy] = r
        lat = r["latency_ms"]
        lines.append(
            f"| {c} | {'calibrated' if policy == 'calibrated' else 'exit 16 alone'} | {pct(r['accuracy'])} "
            f"| {pct(agreement(f'value-{policy}-c{c}'))} | {lat['mean']:.1f} | {lat['p50']:.1f} | {lat['p99']:.1f} "
            f"| {r['throughput_rps']:.1f} | {exits(r)} | {r['compute_ms_per_answer']:.1f} |"
        )
    cal_r, full_r = rows["calibrated"], rows["exit16"]
    headline.append(
        f"concurrency {c}: median latency {100 * (cal_r['latency_ms']['p50'] / full_r['latency_ms']['p50'] - 1):+.0f}% "
        f"at accuracy {100 * (cal_r['accuracy'] - full_r['accuracy']):+.1f} points "
        f"(mean {100 * (cal_r['latency_ms']['mean'] / full_r['latency_ms']['mean'] - 1):+.0f}%, "
        f"throughput x{cal_r['throughput_rps'] / full_r['throughput_rps']:.2f})"
    )
lines += ["", "Against exit 16 alone: " + "; ".join(headline) + ".", ""]

lines += [
    "### Shadow work and ordinary answers",
    "",
    "The calibrated cascade with unit 8 sending a share of the samples it answers on as shadow work "
    "(`--shadow-rate`), each rate a cascade of its own. Shadow outcomes are counted by unit 8 during the run; "
    "the agreement is its `dnet_exit_agreement{exit=8}` after it (the agreement of its own answers over its window).",
    "",
    "| concurrency | shadow rate | p50 ms | p99 ms | answers/s | p50 / p50 without | shadow agreed / disagreed / dropped / failed "
    "| agreement of exit 8 |",
    "|---|---|---|---|---|---|---|---|",
]
OUTCOMES = ("agreed", "disagreed", "dropped", "failed")
for c in (1, 4):
    base = report(f"shadow0-c{c}")["latency_ms"]["p50"]
    previous = f"warm-shadow{{rate}}" if c == 1 else "shadow{rate}-c1"
    for rate in ("0", "0.1", "1"):
        name, before = f"shadow{rate}-c{c}", previous.format(rate=rate)
        r = report(name)
        lat = r["latency_ms"]
        counts = [metric(name, "dnet_shadow_total", 'outcome="%s"' % o)
                  - metric(before, "dnet_shadow_total", 'outcome="%s"' % o) for o in OUTCOMES]
        measured = metric(name, "dnet_exit_agreement", 'exit="8"')
        lines.append(
            f"| {c} | {rate} | {lat['p50']:.1f} | {lat['p99']:.1f} | {r['throughput_rps']:.1f} | {lat['p50'] / base:.2f} "
            f"| {' / '.join('%.0f' % n for n in counts)} | {pct(measured) if sum(counts[:2]) else '-'} |"
        )
lines.append("")

unit8 = report("value-calibrated-c16")["throughput_rps"]
lines += [
    "### Answers that beat the deadline",
    "",
    "Open-loop load at a multiple of each policy's capacity (its answers/s at concurrency 16, above), 500 ms "
    "deadlines, unit 8 with `--answer-when-late` (floor 0) and without (the shed-only baseline). With exit 16 "
    "alone every sample goes on and the units after unit 8 are the bottleneck; with the calibrated thresholds "
    f"98% answer at unit 8, which is the bottleneck itself. Unit 8 on its CPU answers about {unit8:.1f}/s "
    "(the calibrated cascade at concurrency 16): above that no flag can help. Goodput: answers within the "
    "deadline over requests offered; agreement and accuracy over the answers.",
    "",
    "| thresholds | load | offered/s | `--answer-when-late` | offered | answered in time | goodput "
    "| answered late at exit 8 | agreement with exit 16 | accuracy | failures |",
    "|---|---|---|---|---|---|---|---|---|---|---|",
]
goals = []
for policy, factor in (("exit16", 2), ("exit16", 3), ("calibrated", 3)):
    goodput = {}
    capacity = report(f"value-{policy}-c16")["throughput_rps"]
    shown = "exit 16 alone" if policy == "exit16" else "calibrated"
    for late in ("off", "on"):
        name = f"late-{policy}-x{factor}-{late}"
        r = report(name)
        offered = r["sent"] + r["local"]
        goodput[late] = r["answered"] / offered if offered else 0.0
        failures = ", ".join(f"{k} {v}" for k, v in sorted(r["errors"].items())) or "none"
        lines.append(
            f"| {shown} | {factor}x | {factor * capacity:.1f} | {late} | {offered} | {r['answered']} "
            f"| {goodput[late]:.2f} | {metric(name, 'dnet_late_answers_total'):.0f} | {pct(agreement(name))} "
            f"| {pct(r['accuracy'])} | {failures} |"
        )
    keeps_up = factor * capacity <= unit8
    met = goodput["on"] >= 0.9
    goals.append(
        f"{shown} at {factor}x ({factor * capacity:.1f}/s offered, unit 8 "
        f"{'keeps up' if keeps_up else 'does not keep up'}): {'met' if met else 'not met'}, goodput "
        f"{goodput['on']:.2f} with the flag against {goodput['off']:.2f} shed-only"
    )
lines += ["", "Goal (goodput >= 0.9 at 2x and 3x where the first unit keeps up, i.e. offers no more than it "
          f"answers alone, {unit8:.1f}/s): " + "; ".join(goals) + "."]


def live_section(folder):
    """The live thresholds part, from scripts/bench_live.py's files in `folder`."""
    summary = json.load(open(os.path.join(folder, "summary.json")))
    target, samples = summary["target"], summary["samples_per_request"]

    def moved(run):
        """(samples answered by unit 8 until its last move in this run, seconds until then)."""
        rows = [r.split(",") for r in open(os.path.join(folder, f"{run['name']}.csv")).read().splitlines()[1:]]
        first = last = rows[0]
        for previous, row in zip(rows, rows[1:]):
            if row[2] != previous[2]:
                last = row
        return (float(last[1]) - float(first[1])) * samples, float(last[0]) - float(first[0])

    out = [
        "### Live thresholds",
        "",
        f"A cascade of direct units 8 -> 16 on the same model (one libtorch thread each, unit 8 on CPU 0, unit 16 "
        f"on CPU 1), the test set as traffic (requests of {samples} images, concurrency 2), unit 8 calibrating its "
        f"own threshold (`--shadow-rate 1 --target-agreement {target} --threshold-range 0.05..0.9999`, its "
        f"default window of {summary['window']} outcomes), started at 0.05, at 0.9999 and at `test-unit calibrate "
        f"--exits 8,16 --target-agreement {target}`'s choice for the same inputs; then, settled, the test set with "
        f"Gaussian noise of {summary['noise']} on the pixels (`test-unit --noise`; calibrate's choice for the same "
        "noisy inputs beside it). Traffic goes in rounds of "
        f"{summary['round_requests']} requests until the window holds the run's inputs alone (a window of outcomes "
        "taken since it began, `dnet_live_outcomes_total`) and a whole round passes without a move; "
        "then the same inputs go through once more, and their answers are checked against exit 16's for the same "
        "input (calibrate's table). Settled after: the samples unit 8 had answered, and the seconds, from the "
        "start of the run to its last move (`scripts/bench_live.py`).",
        "",
        f"![exit 8's threshold over the samples it answered]({summary['plot']})",
        "",
        "| run | start | settled at | calibrate's choice | settled after (samples / s) | answered at exit 8 "
        "(calibrate's) | agreement with exit 16 | rounds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in summary["runs"]:
        after, seconds = moved(run)
        out.append(
            f"| {run['label']} | {run['start']:.4f} | {run['threshold']:.4f} | {run['offline']:.4f} "
            f"| {after:.0f} / {seconds:.0f} | {pct(run['early_share'])} ({pct(run['offline_share'])}) "
            f"| {pct(run['agreement'])} | {run['rounds']} |"
        )
    failed = ", ".join(f"{kind} {n}" for kind, n in summary["failed"].items()) or "none"
    out += ["", f"Requests that failed over all runs (left out of what is measured): {failed}."]
    worst = min(run["agreement"] for run in summary["runs"])
    cost = max(run["offline_share"] - run["early_share"] for run in summary["runs"])
    out += ["", f"Goal (answers agree with exit 16 on at least the target less 0.01, {target - 0.01:.2f}; answered "
            f"at exit 8 within 10 points of calibrate's choice): lowest agreement {pct(worst)} "
            f"({'met' if worst >= target - 0.01 else 'not met'}), largest shortfall at exit 8 {100 * cost:.1f} points "
            f"({'met' if cost <= 0.10 else 'not met'}).", ""]
    return out


live = os.path.join(out, "live")
if os.path.exists(os.path.join(live, "summary.json")):
    lines += [""] + live_section(live)
print("\n".join(lines))
