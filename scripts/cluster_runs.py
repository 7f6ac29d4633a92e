"""The broker cluster section of RELIABILITY.md from the tables of several
`chaos --only cluster` runs: a summary per scenario over the runs (sent,
failed, the most failed in one run, lost, wrong, the longest stop of
answers, the longest call), then every run's table.
usage: cluster_runs.py PREFIX RUNS   (reads PREFIX.run1 .. PREFIX.runRUNS)"""
import re
import sys

prefix, runs = sys.argv[1], int(sys.argv[2])
tables = []
for run in range(1, runs + 1):
    try:
        tables.append(open(f"{prefix}.run{run}").read().strip())
    except FileNotFoundError:
        tables.append(None)

summary = {}
for table in filter(None, tables):
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 13 or not cells[0].startswith("cluster"):
            continue
        name, sent, answered, wrong = cells[0], int(cells[1]), int(cells[2]), int(cells[3])
        errors = sent - answered
        lost = int(cells[8])
        note = cells[12]
        stop = re.search(r"answers stopped for at most ([\d.]+) s", note)
        back = re.search(r"first answer ([\d.]+) s after the cluster was back", note)
        longest = re.search(r"longest call ([\d.]+) s", note)
        s = summary.setdefault(name, {"runs": 0, "sent": 0, "failed": 0, "worst": 0.0, "lost": 0, "wrong": 0,
                                      "stop": 0.0, "back": 0.0, "longest": 0.0, "held": 0})
        s["runs"] += 1
        s["sent"] += sent
        s["failed"] += errors - lost
        s["worst"] = max(s["worst"], (errors - lost) / max(sent, 1))
        s["lost"] += lost
        s["wrong"] += wrong
        s["stop"] = max(s["stop"], float(stop.group(1)) if stop else 0.0)
        s["back"] = max(s["back"], float(back.group(1)) if back else 0.0)
        s["longest"] = max(s["longest"], float(longest.group(1)) if longest else 0.0)
        s["held"] += cells[11] == "yes"

print("## Broker cluster: nodes killed under load (`make chaos`)\n")
print(f"{runs} runs of `chaos --only cluster` (a cascade 8 -> 12 -> 16 on a private three-node RabbitMQ cluster, "
      "quorum queues, each unit's two programs on different nodes, four paced closed-loop callers at 70 % of the "
      "capacity measured first; every killed node brought back before the next scenario). Over the runs:\n")
print("| scenario | runs | bounds held | sent | failed | most failed in one run | lost | wrong | "
      "answers stopped at most (s) | answers back after the cluster's return (s) | longest call (s) |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for name, s in summary.items():
    whole = "whole cluster" in name
    stopped = "" if whole else "%.2f" % s["stop"]
    back = "%.2f" % s["back"] if whole else ""
    print(f"| {name} | {s['runs']} | {s['held']} of {s['runs']} | {s['sent']} | {s['failed']} | "
          f"{100 * s['worst']:.2f} % | {s['lost']} | {s['wrong']} | {stopped} | {back} | {s['longest']:.2f} |")
missing = [str(i + 1) for i, t in enumerate(tables) if t is None]
if missing:
    print(f"\nRuns without a table (the suite failed before writing it): {', '.join(missing)}.")
for run, table in enumerate(tables, 1):
    if table:
        print(f"\n### Run {run}\n\n{table}")
