//! Images to send: CIFAR-10 binary records, or deterministic synthetic ones,
//! normalised as docs/model-spec.md says (pixels / 255, then per-channel
//! mean/std); optionally with Gaussian noise on the pixels (`--noise`), to
//! change the inputs as live traffic drifts.

use std::path::Path;

use tch::{Kind, Tensor};

/// Bytes per CIFAR-10 record: one label byte, then the red, green and blue 32x32 planes.
pub const RECORD_BYTES: usize = 1 + PIXELS;
/// Bytes per image: an unlabelled record.
pub const PIXELS: usize = 3 * 32 * 32;
const MEAN: [f64; 3] = [0.4914, 0.4822, 0.4465];
const STD: [f64; 3] = [0.2023, 0.1994, 0.2010];

/// One request's images, normalised [N, 3, 32, 32], and their labels when known.
#[derive(Debug)]
pub struct Sample {
    pub image: Tensor,
    pub labels: Vec<Option<u8>>,
}

/// Where the images come from.
#[derive(Debug)]
pub enum Inputs {
    /// Records of a CIFAR-10 binary file, used in order and cycled; without
    /// labels, each record is an image's 3072 bytes alone.
    Dataset { bytes: Vec<u8>, labelled: bool },
    /// Pseudo-random pixels from a seed.
    Synthetic(u64),
    /// Another source's images with Gaussian noise of standard deviation
    /// `sigma` added to every pixel (on the 0..1 scale, clipped to it),
    /// drawn from `seed` and the sample's number: sample `i` is the same
    /// noisy image in every run.
    Noisy { images: Box<Inputs>, sigma: f64, seed: u64 },
}

impl Inputs {
    /// Reads a CIFAR-10 binary file.
    ///
    /// # Errors
    /// An unreadable or empty file, or one whose size is not a multiple of 3073 bytes.
    pub fn dataset(path: &Path) -> anyhow::Result<Inputs> {
        Inputs::open(path, true)
    }

    /// Reads a CIFAR-10 binary file, or with `labelled = false` a file of
    /// images alone (3072 bytes each).
    ///
    /// # Errors
    /// An unreadable or empty file, or one whose size is not a multiple of the record size.
    pub fn open(path: &Path, labelled: bool) -> anyhow::Result<Inputs> {
        let bytes = std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        let record = record_bytes(labelled);
        if bytes.is_empty() || bytes.len() % record != 0 {
            anyhow::bail!(
                "{} is not a CIFAR-10 binary file{}: {} bytes is not a whole number of {record}-byte records",
                path.display(),
                if labelled { "" } else { " without labels" },
                bytes.len()
            );
        }
        Ok(Inputs::Dataset { bytes, labelled })
    }

    /// These images with Gaussian noise of `sigma` (0: none) drawn from `seed`.
    #[must_use]
    pub fn with_noise(self, sigma: f64, seed: u64) -> Inputs {
        if sigma > 0.0 {
            Inputs::Noisy {
                images: Box::new(self),
                sigma,
                seed,
            }
        } else {
            self
        }
    }

    /// Whether samples carry labels.
    #[must_use]
    pub fn labelled(&self) -> bool {
        match self {
            Inputs::Dataset { labelled, .. } => *labelled,
            Inputs::Synthetic(_) => false,
            Inputs::Noisy { images, .. } => images.labelled(),
        }
    }

    /// Images in a file; `None` for synthetic ones (endless).
    #[must_use]
    pub fn records(&self) -> Option<u64> {
        match self {
            Inputs::Dataset { bytes, labelled } => Some((bytes.len() / record_bytes(*labelled)) as u64),
            Inputs::Synthetic(_) => None,
            Inputs::Noisy { images, .. } => images.records(),
        }
    }

    /// Sample number `i` (the dataset cycles).
    #[must_use]
    pub fn get(&self, i: u64) -> Sample {
        let (pixels, label) = self.pixels(i);
        Sample {
            image: normalise_values(&pixels),
            labels: vec![label],
        }
    }

    /// Sample `i`'s pixels on the 0..1 scale, and its label.
    fn pixels(&self, i: u64) -> (Vec<f64>, Option<u8>) {
        let scale = |pixels: &[u8]| pixels.iter().map(|&p| f64::from(p) / 255.0).collect();
        match self {
            Inputs::Dataset { bytes, labelled } => {
                let size = record_bytes(*labelled);
                let start = (i % (bytes.len() / size) as u64) as usize * size;
                let record = &bytes[start..start + size];
                match record.split_first() {
                    Some((&label, pixels)) if *labelled => (scale(pixels), Some(label)),
                    _ => (scale(record), None),
                }
            }
            Inputs::Synthetic(seed) => {
                let mut state = seed.wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
                let pixels: Vec<u8> = (0..PIXELS).map(|_| (splitmix64(&mut state) >> 56) as u8).collect();
                (scale(&pixels), None)
            }
            Inputs::Noisy { images, sigma, seed } => {
                let (mut pixels, label) = images.pixels(i);
                let mut state = seed ^ i.wrapping_mul(0xD1B5_4A32_D192_ED03);
                for pixel in &mut pixels {
                    let noise = *sigma * gaussian(&mut state);
                    *pixel = (*pixel + noise).clamp(0.0, 1.0);
                }
                (pixels, label)
            }
        }
    }

    /// Request number `i` of `n` samples each: samples `i * n` to `i * n + n - 1`.
    #[must_use]
    pub fn request(&self, i: u64, n: u64) -> Sample {
        if n == 1 {
            return self.get(i);
        }
        let samples: Vec<Sample> = (0..n).map(|k| self.get(i * n + k)).collect();
        let images: Vec<&Tensor> = samples.iter().map(|s| &s.image).collect();
        Sample {
            image: Tensor::cat(&images, 0),
            labels: samples.iter().flat_map(|s| s.labels.iter().copied()).collect(),
        }
    }
}

/// Bytes per record of a file with or without label bytes.
fn record_bytes(labelled: bool) -> usize {
    if labelled {
        RECORD_BYTES
    } else {
        PIXELS
    }
}

/// 3072 pixel bytes (R, G, B planes) -> normalised F32 [1, 3, 32, 32].
pub fn normalise(pixels: &[u8]) -> Tensor {
    let scaled: Vec<f64> = pixels.iter().map(|&p| f64::from(p) / 255.0).collect();
    normalise_values(&scaled)
}

/// 3072 pixels on the 0..1 scale (R, G, B planes) -> normalised F32 [1, 3, 32, 32].
fn normalise_values(pixels: &[f64]) -> Tensor {
    let values: Vec<f32> = pixels
        .iter()
        .enumerate()
        .map(|(i, &p)| {
            let channel = i / (32 * 32);
            ((p - MEAN[channel]) / STD[channel]) as f32
        })
        .collect();
    Tensor::from_slice(&values).reshape([1, 3, 32, 32]).to_kind(Kind::Float)
}

/// A standard normal draw (Box-Muller) from the generator's state.
fn gaussian(state: &mut u64) -> f64 {
    // 53 random bits in (0, 1]: the logarithm never sees 0.
    let uniform = |state: &mut u64| ((splitmix64(state) >> 11) + 1) as f64 / (1_u64 << 53) as f64;
    let (u, v) = (uniform(state), uniform(state));
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

/// SplitMix64: a small, good, seedable generator (synthetic pixels, arrivals).
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_each_plane_with_its_channel() {
        let mut pixels = vec![0_u8; PIXELS];
        pixels[0] = 255; // red, first pixel
        pixels[2 * 1024] = 255; // blue, first pixel
        let image = normalise(&pixels);
        let at = |c: i64| image.double_value(&[0, c, 0, 0]);
        assert!((at(0) - (1.0 - 0.4914) / 0.2023).abs() < 1e-5);
        assert!((at(1) - (0.0 - 0.4822) / 0.1994).abs() < 1e-5);
        assert!((at(2) - (1.0 - 0.4465) / 0.2010).abs() < 1e-5);
    }

    #[test]
    fn noise_is_the_same_for_a_sample_in_every_run_and_has_its_spread() {
        let noisy = Inputs::Synthetic(3).with_noise(0.1, 7);
        assert!(noisy.get(5).image.equal(&noisy.get(5).image));
        let clean = Inputs::Synthetic(3).get(5).image;
        // Back on the 0..1 scale of the first plane: the noise added.
        let difference = (noisy.get(5).image - &clean).narrow(1, 0, 1) * STD[0];
        let spread = difference.std(true).double_value(&[]);
        // Clipping at 0 and 1 narrows it a little.
        assert!((0.07..0.11).contains(&spread), "{spread}");
        assert!(Inputs::Synthetic(3).with_noise(0.0, 7).get(5).image.equal(&clean));
    }

    #[test]
    fn synthetic_images_are_deterministic_and_differ() {
        let inputs = Inputs::Synthetic(3);
        assert!(inputs.get(5).image.equal(&inputs.get(5).image));
        assert!(!inputs.get(5).image.equal(&inputs.get(6).image));
        assert_eq!(inputs.get(0).labels, vec![None]);
    }
}
