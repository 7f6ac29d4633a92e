//! The original's tensor pickles against today's torch (the venv's): what
//! `pickle.dumps` writes we read to the same values, and what we write
//! `pickle.loads` reads back to equal tensors. Fixtures are made at test time.

use std::path::Path;
use std::process::Command;

use dnet_codec::pickle::{read, write, PickleDtype};
use dnet_codec::BOUNDARY_SHAPES;
use dnet_testkit::venv_python;

/// Writes, for every case `name shape dtype`, `name.pkl` (`pickle.dumps` of a
/// random tensor, with strides other than contiguous for every other case:
/// transposed, or its first row expanded with stride 0; pickle protocol 3 for
/// every third) and `name.raw` (its values, contiguous, little-endian).
const MAKE_FIXTURES: &str = r#"
import pickle, sys, torch
out = sys.argv[1]
torch.manual_seed(0)
for i, line in enumerate(open(out + "/cases.txt")):
    name, shape, dtype = line.split()
    shape = [int(d) for d in shape.split(",")]
    if dtype == "f32":
        t = torch.randn(shape)
    else:
        t = torch.randint(0, 10, shape, dtype=torch.int64)
    if i % 4 == 1 and t.dim() > 1:
        t = t.transpose(0, 1).contiguous().transpose(0, 1)  # same values, other strides
    elif i % 4 == 3 and t.dim() > 1:
        t = t[:1].expand(t.shape)  # stride 0: each row reads the first
    # Protocol 3 is what torch 1.7's Python (3.6, 3.7) wrote by default; 4 today's.
    open(f"{out}/{name}.pkl", "wb").write(pickle.dumps(t, protocol=3 if i % 3 == 0 else 4))
    open(f"{out}/{name}.raw", "wb").write(t.contiguous().numpy().tobytes())
"#;

/// Reads every `name.ours.pkl` with `pickle.loads` and compares it with `name.raw`.
const CHECK_OURS: &str = r#"
import pickle, sys, numpy, torch
out = sys.argv[1]
for line in open(out + "/cases.txt"):
    name, shape, dtype = line.split()
    t = pickle.loads(open(f"{out}/{name}.ours.pkl", "rb").read())
    raw = open(f"{out}/{name}.raw", "rb").read()
    want = torch.from_numpy(numpy.frombuffer(raw, dtype=numpy.float32 if dtype == "f32" else numpy.int64).copy())
    want = want.reshape([int(d) for d in shape.split(",")])
    assert isinstance(t, torch.Tensor) and t.dtype == want.dtype and torch.equal(t, want), name
print("ok")
"#;

fn python(script: &str, dir: &Path) {
    let output = Command::new(venv_python())
        .arg("-c")
        .arg(script)
        .arg(dir)
        .output()
        .expect("run the venv's python");
    assert!(
        output.status.success(),
        "python failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn pickles_of_every_boundary_shape_round_trip_with_torch() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cases = Vec::new();
    for (layer, shape) in BOUNDARY_SHAPES.iter().enumerate() {
        for n in [1, 3] {
            let dims: Vec<String> = std::iter::once(n)
                .chain(shape.iter().copied())
                .map(|d| d.to_string())
                .collect();
            cases.push((format!("x{layer}-n{n}"), dims.join(","), "f32"));
        }
    }
    for n in [1, 3] {
        cases.push((format!("category-n{n}"), n.to_string(), "i64"));
    }
    let listing: String = cases
        .iter()
        .map(|(name, shape, dtype)| format!("{name} {shape} {dtype}\n"))
        .collect();
    std::fs::write(dir.path().join("cases.txt"), listing).expect("write cases");
    python(MAKE_FIXTURES, dir.path());

    for (name, shape, dtype) in &cases {
        let pickled = std::fs::read(dir.path().join(format!("{name}.pkl"))).expect("fixture");
        let raw = std::fs::read(dir.path().join(format!("{name}.raw"))).expect("values");
        let want_shape: Vec<usize> = shape.split(',').map(|d| d.parse().expect("dim")).collect();
        let elements = want_shape.iter().product();
        let tensor = read(&pickled, elements).unwrap_or_else(|e| panic!("{name}: {e}"));
        let want_dtype = if *dtype == "f32" {
            PickleDtype::F32
        } else {
            PickleDtype::I64
        };
        assert_eq!((tensor.dtype, &tensor.shape), (want_dtype, &want_shape), "{name}");
        assert!(tensor.data == raw, "{name}: the values differ");
        let ours = write(tensor.dtype, &tensor.shape, &tensor.data);
        std::fs::write(dir.path().join(format!("{name}.ours.pkl")), ours).expect("write ours");
    }
    python(CHECK_OURS, dir.path());
}
