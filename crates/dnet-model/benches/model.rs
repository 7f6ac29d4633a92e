//! Model speed for BENCHMARKS.md, in one process, no broker:
//!
//! 1. tch (BatchNorm folded, channels-last) against the PyTorch reference
//!    (eager, as the original runs), same weights and threads, batch 1/8/32.
//! 2. What folding and channels-last bring, one step at a time.
//! 3. Precisions: speed at batch 32 and fidelity against F32.
//! 4. The cost of idleness: a forward after the model sat idle, with
//!    libgomp's default wait policy, spinning, passive, and one thread.
//! 5. Wire dtypes: a cascade 0->8->16 whose handed-on tensor travels in
//!    F16 or BF16, against F32 on the wire.
//!
//! Every figure is the median of repeats with their range. Writes a
//! Markdown section to `$DNET_BENCH_OUT` (default bench-out/model.md).

use std::path::Path;
use std::time::{Duration, Instant};

use dnet_model::codec::{decode_x, encode_x};
use dnet_model::model::MultiExitInception;
use dnet_model::settings::{Precision, WireDtype};
use dnet_model::weights::{load, WeightSource};
use dnet_testkit::stats::{rates, Summary};
use dnet_testkit::venv_python;
use tch::{Device, Kind, Tensor};

const THREADS: i32 = 2;
const REPEATS: usize = 7;
const REPEAT_SECONDS: f64 = 2.0;
const BATCHES: [i64; 3] = [1, 8, 32];
/// Inputs compared between precisions.
const FIDELITY_INPUTS: i64 = 128;
/// Inputs sent through the cascade in each wire dtype.
const WIRE_INPUTS: i64 = 300;
/// Idle gaps before a forward, ms.
const GAPS_MS: [u64; 4] = [0, 20, 50, 200];
/// Set in the environment of the child that measures idleness.
const IDLE_PROBE: &str = "DNET_IDLE_PROBE";

fn model(precision: Precision) -> MultiExitInception {
    load(&WeightSource::Random(1), Device::Cpu, precision)
        .expect("random weights")
        .model
}

fn images(n: i64, seed: i64) -> Tensor {
    tch::manual_seed(seed);
    Tensor::randn([n, 3, 32, 32], (Kind::Float, Device::Cpu))
}

/// The PyTorch reference's images/s per repeat, by batch.
fn reference_rates(weights: &Path) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/bench_reference.py");
    let mut command = std::process::Command::new(venv_python());
    command
        .arg(&script)
        .arg(weights)
        .arg(THREADS.to_string())
        .arg(REPEATS.to_string())
        .arg(REPEAT_SECONDS.to_string());
    command.args(BATCHES.iter().map(ToString::to_string));
    let output = command.output().expect("run bench_reference.py");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("JSON rates")
}

fn tch_against_pytorch() -> String {
    let loaded = load(&WeightSource::Random(1), Device::Cpu, Precision::F32).expect("random weights");
    let dir = tempfile::tempdir().expect("temp dir");
    let weights = dir.path().join("weights.safetensors");
    // The VarStore keeps the loaded (unfolded) weights: the reference gets the same values.
    loaded.vars.save(&weights).expect("save the weights for the reference");
    let reference = reference_rates(&weights);
    let _no_grad = tch::no_grad_guard();
    let mut rows = Vec::new();
    for batch in BATCHES {
        let x = images(batch, batch);
        let ours = Summary::of(&rates(REPEATS, REPEAT_SECONDS, batch as f64, || {
            loaded.model.forward(&x, 0, 16).expect("forward");
        }));
        let theirs: Vec<f64> = reference[batch.to_string()]
            .as_array()
            .expect("reference rates")
            .iter()
            .filter_map(serde_json::Value::as_f64)
            .collect();
        let theirs = Summary::of(&theirs);
        let goal = if batch == 32 {
            ">= 1.2"
        } else if batch == 1 {
            ">= 1.0"
        } else {
            ""
        };
        eprintln!("batch {batch}: tch {ours:.1}, PyTorch {theirs:.1} img/s");
        rows.push(format!(
            "| {batch} | {ours:.1} | {theirs:.1} | {:.2} | {goal} |",
            ours.median / theirs.median
        ));
    }
    format!(
        "### tch against the PyTorch reference\n\n\
         Forward 0->16, F32, {THREADS} libtorch threads on both sides, the same random weights and inputs; \
         images/s as the median of {REPEATS} repeats of {REPEAT_SECONDS} s (range in brackets). PyTorch: \
         `crates/dnet-model/tests/reference/reference.py`, eager under `torch.no_grad()` (as the original \
         runs), libtorch 2.11.0. tch: `dnet-model` with BatchNorm folded into the convolutions and \
         channels-last activations.\n\n\
         | batch | tch images/s | PyTorch images/s | ratio of medians | goal |\n|---|---|---|---|---|\n{}\n",
        rows.join("\n")
    )
}

/// The model of `load(Random(1))` before folding: the same weights.
fn unfolded() -> (tch::nn::VarStore, MultiExitInception) {
    let vars = tch::nn::VarStore::new(Device::Cpu);
    tch::manual_seed(1);
    let model = MultiExitInception::new(&vars.root());
    (vars, model)
}

fn layouts() -> String {
    let _no_grad = tch::no_grad_guard();
    let variants: [(&str, Option<bool>); 3] = [
        ("BatchNorm apart, contiguous (NCHW)", None),
        ("BatchNorm folded, contiguous (NCHW)", Some(false)),
        ("BatchNorm folded, channels-last (NHWC), the default", Some(true)),
    ];
    let mut rows = Vec::new();
    for (name, fold) in variants {
        let (_vars, mut model) = unfolded();
        if let Some(channels_last) = fold {
            model.fold_batch_norm(Kind::Float, channels_last);
        }
        let cells: Vec<String> = [1, 32]
            .iter()
            .map(|&batch| {
                let x = images(batch, batch);
                let rate = Summary::of(&rates(REPEATS, REPEAT_SECONDS, batch as f64, || {
                    model.forward(&x, 0, 16).expect("forward");
                }));
                format!("{rate:.1}")
            })
            .collect();
        eprintln!("layout {name}: {cells:?}");
        rows.push(format!("| {name} | {} |", cells.join(" | ")));
    }
    format!(
        "### Folding and memory layout\n\n\
         tch, forward 0->16, F32, {THREADS} threads, images/s (median of {REPEATS} repeats, range). libtorch's \
         convolutions go through oneDNN either way; the layout decides which of its kernels run.\n\n\
         | model | batch 1 | batch 32 |\n|---|---|---|\n{}\n",
        rows.join("\n")
    )
}

/// Largest |difference| and category agreement of `precision` against F32 at `exit`.
fn fidelity(reference: &MultiExitInception, other: &MultiExitInception, exit: usize) -> (f64, f64) {
    let x = images(FIDELITY_INPUTS, 77);
    let want = reference.forward(&x, 0, exit).expect("forward").probs;
    let got = other.forward(&x, 0, exit).expect("forward").probs;
    let difference = (&got - &want).abs().max().double_value(&[]);
    let same = got
        .argmax(1, false)
        .eq_tensor(&want.argmax(1, false))
        .to_kind(Kind::Float);
    (difference, same.mean(Kind::Float).double_value(&[]))
}

fn precisions() -> String {
    let _no_grad = tch::no_grad_guard();
    let f32_model = model(Precision::F32);
    let x = images(32, 32);
    let mut rows = Vec::new();
    let mut f32_rate = 0.0;
    for precision in [Precision::F32, Precision::Bf16, Precision::F16] {
        let model = model(precision);
        let rate = Summary::of(&rates(REPEATS, REPEAT_SECONDS, 32.0, || {
            model.forward(&x, 0, 16).expect("forward");
        }));
        if precision == Precision::F32 {
            f32_rate = rate.median;
        }
        let (d8, same8) = fidelity(&f32_model, &model, 8);
        let (d16, same16) = fidelity(&f32_model, &model, 16);
        eprintln!("{precision:?}: {rate:.1} img/s");
        rows.push(format!(
            "| {precision:?} | {rate:.1} | {:.2} | {d8:.1e} | {:.1}% | {d16:.1e} | {:.1}% |",
            rate.median / f32_rate,
            same8 * 100.0,
            same16 * 100.0
        ));
    }
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let bf16 = if cpu.contains("avx512_bf16") || cpu.contains("amx_bf16") {
        "has"
    } else {
        "lacks"
    };
    format!(
        "### Precision (`--precision`)\n\n\
         Forward 0->16 at batch 32, {THREADS} threads, median of {REPEATS} repeats (range). Fidelity against F32 \
         over {FIDELITY_INPUTS} random inputs: largest difference of a probability, and the share of inputs \
         with the same category, at exits 8 and 16. This CPU {bf16} AVX512-BF16/AMX. Random weights are \
         untrained: their probabilities sit near 0.1, so categories flip on small differences more \
         often than with trained weights.\n\n\
         | precision | images/s | speed vs F32 | max diff exit 8 | same category exit 8 | max diff exit 16 | same category exit 16 |\n\
         |---|---|---|---|---|---|---|\n{}\n",
        rows.join("\n")
    )
}

/// A cascade 0->8 -> 16 with the exit-8 tensor handed on in each wire dtype
/// (encoded and decoded as the units do), against F32 on the wire.
fn wire_dtypes() -> String {
    let _no_grad = tch::no_grad_guard();
    let model = model(Precision::F32);
    let x = images(WIRE_INPUTS, 300);
    let trunk = model
        .forward(&x, 0, 8)
        .expect("forward")
        .trunk
        .expect("exit 8 hands on a tensor");
    let samples = WIRE_INPUTS as usize;
    let through = |dtype: WireDtype| {
        let bytes = encode_x(&trunk.to_kind(dtype.kind())).expect("encode");
        let received = decode_x(&bytes, 8, samples).expect("the next unit reads it");
        (bytes.len(), model.forward(&received, 8, 16).expect("forward").probs)
    };
    let (f32_bytes, want) = through(WireDtype::F32);
    let mut rows = Vec::new();
    for dtype in [WireDtype::F32, WireDtype::F16, WireDtype::Bf16] {
        let (bytes, got) = through(dtype);
        let difference = (&got - &want).abs().max().double_value(&[]);
        let same = got
            .argmax(1, false)
            .eq_tensor(&want.argmax(1, false))
            .sum(Kind::Int64)
            .int64_value(&[]);
        rows.push(format!(
            "| {dtype:?} | {} | {:.2} | {same} of {WIRE_INPUTS} | {difference:.1e} |",
            bytes / samples,
            bytes as f64 / f32_bytes as f64
        ));
    }
    format!(
        "### Wire dtype (`--wire-dtype`)\n\n\
         A cascade 0->8 -> 16 over {WIRE_INPUTS} random inputs, the exit-8 tensor (288x24x24) encoded in each \
         dtype and decoded (widened to F32) as the next unit does; compared with F32 on the wire: bytes of `x` \
         per sample, inputs answered with the same category at exit 16, and the largest difference of an exit-16 \
         probability. Random weights: probabilities sit near 0.1, so categories flip on smaller differences \
         than with trained weights.\n\n\
         | wire dtype | bytes per sample | vs F32 | same category | max probability difference |\n\
         |---|---|---|---|---|\n{}\n",
        rows.join("\n")
    )
}

/// In the child: forward 0->8 at batch 1 after each gap; prints JSON `{gap_ms: median ms}`.
fn idle_probe() {
    let threads = std::env::var("DNET_IDLE_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(THREADS);
    tch::set_num_threads(threads);
    let model = model(Precision::F32);
    let _no_grad = tch::no_grad_guard();
    let x = images(1, 1);
    let mut medians = serde_json::Map::new();
    for gap in GAPS_MS {
        model.forward(&x, 0, 8).expect("forward");
        let times: Vec<f64> = (0..15)
            .map(|_| {
                std::thread::sleep(Duration::from_millis(gap));
                let started = Instant::now();
                model.forward(&x, 0, 8).expect("forward");
                started.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        medians.insert(gap.to_string(), Summary::of(&times).median.into());
    }
    println!("{}", serde_json::Value::Object(medians));
}

fn idleness() -> String {
    let variants: [(&str, &[(&str, &str)]); 4] = [
        ("libgomp default, 2 threads", &[]),
        ("OMP_WAIT_POLICY=ACTIVE, 2 threads", &[("OMP_WAIT_POLICY", "ACTIVE")]),
        ("OMP_WAIT_POLICY=PASSIVE, 2 threads", &[("OMP_WAIT_POLICY", "PASSIVE")]),
        ("1 thread", &[("DNET_IDLE_THREADS", "1")]),
    ];
    let exe = std::env::current_exe().expect("this benchmark");
    let mut rows = Vec::new();
    for (name, env) in variants {
        let output = std::process::Command::new(&exe)
            .env(IDLE_PROBE, "1")
            .env_remove("OMP_WAIT_POLICY")
            .env_remove("GOMP_SPINCOUNT")
            .envs(env.iter().copied())
            .output()
            .expect("run the idle probe");
        let medians: serde_json::Value = serde_json::from_slice(&output.stdout).expect("idle probe JSON");
        let cells: Vec<String> = GAPS_MS
            .iter()
            .map(|gap| format!("{:.1}", medians[gap.to_string()].as_f64().unwrap_or(f64::NAN)))
            .collect();
        eprintln!("idle: {name}: {cells:?}");
        rows.push(format!("| {name} | {} |", cells.join(" | ")));
    }
    format!(
        "### The cost of idleness\n\n\
         One forward 0->8 at batch 1 after the model sat idle for the given time (median of 15, ms), one \
         process per row. libgomp's workers spin for a while after each parallel region, then sleep; waking \
         a sleeping worker (and its idle vCPU) costs on every one of the forward's parallel regions. A unit \
         in a cascade sits idle while the others compute. `ACTIVE` keeps the workers spinning (no penalty, \
         but they burn their CPUs while idle, which co-located units need); `PASSIVE` sleeps at once (the \
         penalty on every forward).\n\n\
         | wait policy | {} |\n|---|{}\n{}\n",
        GAPS_MS.map(|g| format!("after {g} ms")).join(" | "),
        "---|".repeat(GAPS_MS.len()),
        rows.join("\n")
    )
}

fn main() {
    if std::env::var_os(IDLE_PROBE).is_some() {
        idle_probe();
        return;
    }
    tch::set_num_threads(THREADS);
    let section = format!(
        "## The model (`dnet-model`, in process)\n\n{}\n{}\n{}\n{}\n{}",
        tch_against_pytorch(),
        layouts(),
        precisions(),
        idleness(),
        wire_dtypes()
    );
    let out = std::env::var("DNET_BENCH_OUT").unwrap_or_else(|_| "bench-out/model.md".to_owned());
    if let Some(parent) = Path::new(&out).parent() {
        std::fs::create_dir_all(parent).expect("output folder");
    }
    std::fs::write(&out, &section).expect("write the section");
    println!("{section}");
}
