"""Live thresholds on the trained demo model (part of `make bench-trained`).

A cascade of direct units 8 -> 16 (the demo model trained on scikit-learn's
digits; one libtorch thread each, unit 8 on CPU 0 and unit 16 on CPU 1 where
there are two), the test set as traffic (requests of 8 images, concurrency
2), unit 8 calibrating its own threshold live (--shadow-rate 1
--target-agreement TARGET --threshold-range 0.05..0.9999, its default
window). It starts at 0.05, at 0.9999 and at calibrate's choice for the same
inputs (`test-unit calibrate --exits 8,16`); the last, once settled, gets the
test set with Gaussian noise (`test-unit --noise`): the drift case.

Traffic goes in rounds of ROUND requests until unit 8 has settled (a window of
outcomes taken since the run began, so that the window holds its inputs alone,
and a whole round without a move; at most MAX_ROUNDS), then the inputs
go through once more (the check: answers at exit 8, and agreement with exit
16 as calibrate's table gives it for the same input). Unit 8's metrics are
read every second into a CSV per run (requests it answered, threshold,
window, agreement, its bound, early share, moves).

Writes into OUT_DIR: calibration.json and calibration-noisy.json (calibrate's
reports, their tables the reference), RUN.csv, RUN-check.jsonl (test-unit
--answers of the check), summary.json; and the plot docs/bench-live-thresholds.png.
usage: bench_live.py OUT_DIR   (the venv's python: it plots with matplotlib)
environment: DNET_BIN_DIR (target/release), DNET_CACHE, DNET_BENCH_LIVE_TARGET (0.99)
"""
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request

OUT = sys.argv[1]
BIN = os.environ.get("DNET_BIN_DIR", "target/release")
DEMO = os.path.join(os.environ.get("DNET_CACHE", os.path.expanduser("~/.cache/dnet")), "demo")
WEIGHTS, TEST = os.path.join(DEMO, "digits.safetensors"), os.path.join(DEMO, "digits-test.bin")
TARGET = float(os.environ.get("DNET_BENCH_LIVE_TARGET", "0.99"))
NOISE, NOISE_SEED = 0.2, 5
SAMPLES = 8
ROUND, MAX_ROUNDS = 250, 16
UNIT8, UNIT16, METRICS8 = "127.0.0.1:50181", "127.0.0.1:50182", "127.0.0.1:59181"
PLOT = "docs/bench-live-thresholds.png"


def say(message):
    print(f"[bench] live thresholds: {message}", flush=True)


def pinned(cpu):
    return ["taskset", "-c", str(cpu)] if os.cpu_count() and os.cpu_count() >= 2 else []


def calibrate(noise, name):
    """Calibrate's report for exits 8 and 16 on the test set (with noise): its threshold and table."""
    path = os.path.join(OUT, name)
    subprocess.run([f"{BIN}/test-unit", "calibrate", "--weights", WEIGHTS, "--dataset", TEST,
                    "--target-agreement", str(TARGET), "--exits", "8,16", "--noise", str(noise),
                    "--seed", str(NOISE_SEED), "--json", path], check=True, stdout=subprocess.DEVNULL)
    return json.load(open(path))


def metrics():
    """Unit 8's metrics as {series with labels: value}."""
    text = urllib.request.urlopen(f"http://{METRICS8}/metrics", timeout=5).read().decode()
    values = {}
    for line in text.splitlines():
        m = re.match(r"([a-z_]+)(\{[^}]*\})? (\S+)$", line)
        if m:
            values[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return values


def total(values, name, label=""):
    return sum(v for k, v in values.items() if k.split("{")[0] == name and label in k)


def state(values):
    return {
        "requests": total(values, "dnet_requests_total", 'traffic="ordinary"'),
        "threshold": values.get("dnet_exit_threshold", float("nan")),
        "window": total(values, "dnet_live_window"),
        "agreement": total(values, "dnet_live_agreement"),
        "proved": total(values, "dnet_live_agreement_bound", 'bound="lower"'),
        "early_share": total(values, "dnet_live_early_share"),
        "moves": total(values, "dnet_threshold_moves_total"),
        "taken": total(values, "dnet_live_outcomes_total"),
        "shadow": total(values, "dnet_shadow_total"),
    }


class Poller(threading.Thread):
    """Reads unit 8's state every second into a CSV until stopped."""

    def __init__(self, path):
        super().__init__(daemon=True)
        self.path, self.stop, self.started = path, threading.Event(), time.monotonic()

    def run(self):
        with open(self.path, "w") as f:
            f.write("seconds,requests,threshold,window,agreement,proved,early_share,moves\n")
            while not self.stop.is_set():
                try:
                    s = state(metrics())
                    f.write(f"{time.monotonic() - self.started:.1f},{s['requests']:.0f},{s['threshold']},"
                            f"{s['window']:.0f},{s['agreement']},{s['proved']},{s['early_share']},{s['moves']:.0f}\n")
                    f.flush()
                except OSError:
                    pass
                self.stop.wait(1.0)


FAILED = []


def test_unit(args, answers):
    """test-unit against unit 8 on the test set: its --answers lines. A request that failed is counted
    (FAILED) and kept out of what is measured; anything else that stops test-unit stops the benchmark."""
    command = [f"{BIN}/test-unit", "-a", UNIT8, "--dataset", TEST, "--samples-per-request", str(SAMPLES),
               "--seed", str(NOISE_SEED), "--timeout", "60s", "--answers", answers] + args
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode not in (0, 1) or not os.path.exists(answers):
        raise SystemExit(f"test-unit failed: {done.stderr}")
    lines = [json.loads(line) for line in open(answers)]
    FAILED.extend(line["error"] for line in lines if "error" in line)
    if done.returncode:
        say(done.stderr.strip().splitlines()[-1])
    return [line for line in lines if "exits" in line]


def at_8(lines):
    return sum(1 for line in lines for e in line.get("exits", []) if e == 8)


def wait_for_shadow(sent, patience=120):
    """Until every shadow sample sent has its outcome (they come back after their calls)."""
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        s = state(metrics())
        if s["shadow"] >= sent:
            return s
        time.sleep(0.2)
    raise SystemExit(f"shadow outcomes did not come back: {sent} sent")


class Unit8:
    """Unit 8 started at a threshold; counts the shadow samples it was asked to send."""

    def __init__(self, start, log_path):
        thresholds = ",".join(str(start) if e == 8 else "1" for e in range(1, 16))
        self.process = subprocess.Popen(
            pinned(0) + [f"{BIN}/computation-unit", "serve", "-l", UNIT8, "-n", UNIT16, "-e", "8",
                         "--weights", WEIGHTS, "--threads", "1", "--unit-name", "live-8", "--thresholds", thresholds,
                         "--shadow-rate", "1", "--target-agreement", str(TARGET), "--threshold-range", "0.05..0.9999",
                         "--metrics-address", METRICS8, "--log-format", "json"],
            stdout=open(log_path, "w"), stderr=subprocess.STDOUT)
        self.shadow_sent = 0
        wait_ready(METRICS8)
        # The window the unit sized from the target (its "serving" line says).
        serving = next(json.loads(line) for line in open(log_path) if '"message":"serving"' in line)
        self.window = serving["agreement_window"]

    def settle(self, noise, name):
        """Rounds of traffic until settled: the window holds these inputs alone (a window of outcomes
        taken since the first round) and a whole round passes without a move. (rounds, seconds,
        threshold); when it last moved is read from the run's CSV."""
        began, last_moves, taken_before = time.monotonic(), None, state(metrics())["taken"]
        scratch = os.path.join(OUT, f"{name}-round.jsonl")
        for round_ in range(1, MAX_ROUNDS + 1):
            lines = test_unit(["-n", str(ROUND), "-c", "2", "--noise", str(noise)], answers=scratch)
            self.shadow_sent += at_8(lines)
            s = wait_for_shadow(self.shadow_sent)
            say(f"{name}: round {round_}: threshold {s['threshold']:.4f}, window {s['window']:.0f}, "
                f"moves {s['moves']:.0f}")
            if s["taken"] - taken_before >= self.window and last_moves == s["moves"]:
                return round_, time.monotonic() - began, s["threshold"]
            last_moves = s["moves"]
        raise SystemExit(f"{name}: unit 8 did not settle in {MAX_ROUNDS} rounds of {ROUND} requests")

    def check(self, noise, name, records):
        """The inputs once more: the --answers lines."""
        requests = records // SAMPLES
        path = os.path.join(OUT, f"{name}-check.jsonl")
        return test_unit(["-n", str(requests), "--noise", str(noise)], answers=path)

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=60)


def wait_ready(address, patience=120):
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        try:
            if urllib.request.urlopen(f"http://{address}/readyz", timeout=2).status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the unit with metrics at {address} did not get ready")


def checked(lines, table):
    """Of the samples answered in `lines`: the share answered at exit 8, and the share whose category is
    exit 16's for the same input in calibrate's `table`."""
    samples = early = agreed = 0
    for line in lines:
        for k, (exit_, category) in enumerate(zip(line["exits"], line["categories"])):
            i = line["request"] * SAMPLES + k
            samples += 1
            early += exit_ == 8
            agreed += category == table["answer"][i][15]
    return early / samples, agreed / samples


def plot(runs):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=110)
    for run in runs:
        rows = [line.split(",") for line in open(os.path.join(OUT, f"{run['name']}.csv")).read().splitlines()[1:]]
        xs = [float(r[1]) * SAMPLES for r in rows]
        ys = [float(r[2]) for r in rows]
        ax.step(xs, ys, where="post", label=run["label"])
    for run in runs:
        if run.get("offline") is not None:
            ax.axhline(run["offline"], linestyle=":", linewidth=1, color="grey")
    ax.set_xlabel("samples answered by unit 8")
    ax.set_ylabel("exit 8's threshold")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"Live thresholds, target {TARGET} (dotted: calibrate's choice on the same inputs)", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(PLOT)


def main():
    os.makedirs(OUT, exist_ok=True)
    clean, noisy = calibrate(0.0, "calibration.json"), calibrate(NOISE, "calibration-noisy.json")
    offline, offline_noisy = clean["thresholds"][7], noisy["thresholds"][7]
    records = len(clean["table"]["answer"]) // SAMPLES * SAMPLES
    log16 = open(os.path.join(OUT, "unit-16.log"), "w")
    unit16 = subprocess.Popen(pinned(1 % (os.cpu_count() or 1)) + [
        f"{BIN}/computation-unit", "serve", "-l", UNIT16, "-e", "16", "--weights", WEIGHTS, "--threads", "1",
        "--unit-name", "live-16", "--metrics-address", "127.0.0.1:59182"], stdout=log16, stderr=subprocess.STDOUT)
    wait_ready("127.0.0.1:59182")
    runs = []
    try:
        for name, label, start in (("from-low", "from 0.05", 0.05), ("from-high", "from 0.9999", 0.9999),
                                   ("from-offline", "from calibrate's choice", offline)):
            unit = Unit8(start, os.path.join(OUT, f"{name}.log"))
            window = unit.window
            poller = Poller(os.path.join(OUT, f"{name}.csv"))
            poller.start()
            try:
                rounds, seconds, settled = unit.settle(0.0, name)
                early, agreement = checked(unit.check(0.0, name, records), clean["table"])
                run = dict(name=name, label=label, start=start, rounds=rounds, seconds=seconds, threshold=settled,
                           offline=offline, offline_share=clean["per_exit"][0]["share"], early_share=early,
                           agreement=agreement)
                if name == "from-offline":
                    drift_poller = Poller(os.path.join(OUT, "drift.csv"))
                    poller.stop.set()
                    drift_poller.start()
                    poller = drift_poller
                    rounds, seconds, settled_noisy = unit.settle(NOISE, "drift")
                    early_n, agreement_n = checked(unit.check(NOISE, "drift", records), noisy["table"])
                    runs.append(run)
                    run = dict(name="drift", label=f"noise {NOISE} after settling", start=settled, rounds=rounds,
                               seconds=seconds, threshold=settled_noisy, offline=offline_noisy,
                               offline_share=noisy["per_exit"][0]["share"], early_share=early_n,
                               agreement=agreement_n)
                runs.append(run)
            finally:
                poller.stop.set()
                unit.stop()
    finally:
        unit16.terminate()
        unit16.wait(timeout=60)
    summary = dict(target=TARGET, window=window, samples_per_request=SAMPLES, round_requests=ROUND,
                   noise=NOISE, records=records, runs=runs, plot=PLOT,
                   failed={kind: FAILED.count(kind) for kind in sorted(set(FAILED))})
    json.dump(summary, open(os.path.join(OUT, "summary.json"), "w"), indent=1)
    plot(runs)
    say(f"wrote {OUT}/summary.json and {PLOT}")


main()
