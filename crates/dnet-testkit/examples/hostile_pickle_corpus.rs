//! Writes the hostile pickle forms (`dnet_testkit::hostile`) as seeds of the
//! `pickle` fuzz target: a start-layer byte (0), then the pickle, cut to the
//! fuzzer's `-max_len` (libFuzzer would cut a longer seed itself), one file
//! per form named `hostile-<form>`.
//!
//!   cargo run -p dnet-testkit --example hostile_pickle_corpus -- fuzz/corpus/pickle [MAX_LEN]

use std::path::PathBuf;

use anyhow::Context;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().context("usage: hostile_pickle_corpus DIR [MAX_LEN]")?);
    let max_len: usize = args.next().map_or(Ok(65_536), |n| n.parse()).context("MAX_LEN")?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, pickle) in dnet_testkit::hostile::pickles() {
        let mut seed = vec![0_u8];
        seed.extend_from_slice(&pickle);
        seed.truncate(max_len);
        let words: Vec<String> = name
            .split(|c: char| !c.is_ascii_alphanumeric())
            .filter(|word| !word.is_empty())
            .map(str::to_ascii_lowercase)
            .collect();
        let path = dir.join(format!("hostile-{}", words.join("-")));
        std::fs::write(&path, &seed).with_context(|| format!("writing {}", path.display()))?;
        println!("{} ({} bytes)", path.display(), seed.len());
    }
    Ok(())
}
