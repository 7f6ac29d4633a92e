//! The multi-exit Inception-v3 for CIFAR-10 (docs/model-spec.md).
//!
//! Sixteen trunk layers (index 0..15), fifteen side exits (exit `e` follows
//! trunk layer `e-1`) and the final head (exit 16: avg-pool, `fc`, logits).

use tch::nn;
use tch::{Kind, Tensor};

use crate::blocks::{
    max_pool, to_channels_last, BasicConv2d, Block, InceptionA, InceptionB, InceptionC, InceptionD, InceptionE,
};

/// Number of trunk layers; also the exit layer of the final head.
pub const TRUNK_LAYERS: usize = 16;
/// Exit layers with a side head: 1..=15.
pub const SIDE_EXITS: usize = 15;
pub const NUM_CLASSES: i64 = 10;

/// (C, H, W) of the tensor entering trunk layer `S` (the wire contract, in `dnet-codec`).
pub use dnet_codec::BOUNDARY_SHAPES;

/// Exit heads 1..=15: max-pool kernel, stride, and flattened features.
const EXIT_POOL_KERNEL: [i64; SIDE_EXITS] = [11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 5, 5];
const EXIT_POOL_STRIDE: [i64; SIDE_EXITS] = [3, 3, 3, 3, 5, 5, 5, 5, 5, 1, 1, 1, 1, 1, 1];
const EXIT_FEATURES: [i64; SIDE_EXITS] = [
    2048, 1568, 2304, 2880, 1728, 2304, 2592, 2592, 768, 768, 768, 768, 768, 1280, 2048,
];

/// Default confidence thresholds of exits 1..=15 (the original's values).
pub const DEFAULT_THRESHOLDS: [f64; SIDE_EXITS] = [
    0.85, 0.90, 0.90, 0.90, 0.90, 0.90, 0.90, 0.90, 0.90, 0.90, 0.92, 0.90, 0.90, 0.90, 0.90,
];

/// Why a forward pass cannot run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ForwardError {
    #[error("start_layer {start} and exit layer {exit} are not a valid split: need 0 <= start_layer < exit <= 16")]
    BadSplit { start: usize, exit: usize },
    #[error("x has shape {got:?}; start_layer {start} needs [N, {}, {}, {}]", .expected[0], .expected[1], .expected[2])]
    BadShape {
        start: usize,
        got: Vec<i64>,
        expected: [i64; 3],
    },
}

/// What a forward pass from `start` to `exit` gives.
#[derive(Debug)]
pub struct ForwardOutput {
    /// Output of trunk layer `exit - 1`, to hand on (only when `exit < 16`).
    pub trunk: Option<Tensor>,
    /// Class probabilities [N, 10]: the softmax of `logits`.
    pub probs: Tensor,
    /// The exit's scores before the softmax [N, 10], F32 (at exit 16: the
    /// network's logits, what the original returns).
    pub logits: Tensor,
}

/// A side exit: max-pool, flatten, Linear(F, 128), ReLU, Linear(128, 10).
#[derive(Debug)]
struct ExitHead {
    pool_kernel: i64,
    pool_stride: i64,
    hidden: nn::Linear,
    out: nn::Linear,
}

impl ExitHead {
    fn forward(&self, xs: &Tensor) -> Tensor {
        let pooled = max_pool(xs, self.pool_kernel, self.pool_stride).flatten(1, -1);
        pooled.apply(&self.hidden).relu().apply(&self.out)
    }
}

/// The network; variable paths equal the original state_dict names.
#[derive(Debug)]
pub struct MultiExitInception {
    trunk: Vec<Block>,
    exits: Vec<ExitHead>,
    fc: nn::Linear,
    /// The dtype the network computes in (F32 until [`Self::fold_batch_norm`] says otherwise).
    kind: Kind,
    /// Whether inputs are laid out channels-last before the trunk.
    channels_last: bool,
}

impl MultiExitInception {
    /// Creates the variables under `p` (initialised randomly by tch).
    pub fn new(p: &nn::Path) -> Self {
        let trunk = vec![
            Block::Conv(BasicConv2d::new(&(p / "Conv2d_1a_3x3"), 3, 32, 3, 1, 1)),
            Block::Conv(BasicConv2d::new(&(p / "Conv2d_2a_3x3"), 32, 32, 3, 1, 0)),
            Block::ConvPool(BasicConv2d::new(&(p / "Conv2d_2b_3x3"), 32, 64, 3, 1, 1)),
            Block::Conv(BasicConv2d::new(&(p / "Conv2d_3b_1x1"), 64, 80, 1, 1, 0)),
            Block::ConvPool(BasicConv2d::new(&(p / "Conv2d_4a_3x3"), 80, 192, 3, 1, 0)),
            Block::A(InceptionA::new(&(p / "Mixed_5b"), 192, 32)),
            Block::A(InceptionA::new(&(p / "Mixed_5c"), 256, 64)),
            Block::A(InceptionA::new(&(p / "Mixed_5d"), 288, 64)),
            Block::B(InceptionB::new(&(p / "Mixed_6a"), 288)),
            Block::C(InceptionC::new(&(p / "Mixed_6b"), 768, 128)),
            Block::C(InceptionC::new(&(p / "Mixed_6c"), 768, 160)),
            Block::C(InceptionC::new(&(p / "Mixed_6d"), 768, 160)),
            Block::C(InceptionC::new(&(p / "Mixed_6e"), 768, 192)),
            Block::D(InceptionD::new(&(p / "Mixed_7a"), 768)),
            Block::E(InceptionE::new(&(p / "Mixed_7b"), 1280)),
            Block::E(InceptionE::new(&(p / "Mixed_7c"), 2048)),
        ];
        let exits_path = p / "exits";
        let exits = (0..SIDE_EXITS)
            .map(|i| {
                // `exits` is one sequence of four modules per exit; only 4i+1 and 4i+3 hold weights.
                let j = 4 * i;
                ExitHead {
                    pool_kernel: EXIT_POOL_KERNEL[i],
                    pool_stride: EXIT_POOL_STRIDE[i],
                    hidden: nn::linear(&exits_path / (j + 1), EXIT_FEATURES[i], 128, Default::default()),
                    out: nn::linear(&exits_path / (j + 3), 128, NUM_CLASSES, Default::default()),
                }
            })
            .collect();
        let fc = nn::linear(p / "fc", 2048, NUM_CLASSES, Default::default());
        Self {
            trunk,
            exits,
            fc,
            kind: Kind::Float,
            channels_last: false,
        }
    }

    /// Once the weights are final (loaded and on their device): folds every
    /// batch norm into its convolution, computing from now on in `kind`, with
    /// channels-last activations when `channels_last` (what `weights::load`
    /// does: the fastest here, see BENCHMARKS.md). The linear layers'
    /// variables must be converted to `kind` by their VarStore (`VarStore::set_kind`).
    pub fn fold_batch_norm(&mut self, kind: Kind, channels_last: bool) {
        for block in &mut self.trunk {
            for conv in block.convs_mut() {
                conv.fold(kind, channels_last);
            }
        }
        self.kind = kind;
        self.channels_last = channels_last;
    }

    /// Runs trunk layers `start..exit` on `x`, then the head of `exit`.
    ///
    /// # Errors
    /// A split outside `0 <= start < exit <= 16`, or `x` not shaped
    /// [N, C, H, W] as trunk layer `start` expects.
    pub fn forward(&self, x: &Tensor, start: usize, exit: usize) -> Result<ForwardOutput, ForwardError> {
        if start >= exit || exit > TRUNK_LAYERS {
            return Err(ForwardError::BadSplit { start, exit });
        }
        check_shape(x, start)?;
        let _no_grad = tch::no_grad_guard();
        let trunk = (start..exit).fold(self.input(x), |xs, layer| self.layer(layer, &xs));
        let logits = self.head(exit, &trunk);
        Ok(ForwardOutput {
            // Handed on in F32 (the wire's dtype), whatever the network computes in.
            trunk: (exit < TRUNK_LAYERS).then(|| trunk.to_kind(Kind::Float)),
            probs: logits.softmax(-1, Kind::Float),
            logits,
        })
    }

    /// The probabilities [N, 10] of every exit 1..=16 on images `x`
    /// [N, 3, 32, 32], in one pass through the trunk (what calibration needs).
    ///
    /// # Errors
    /// `x` is not a batch of images.
    pub fn exit_probs(&self, x: &Tensor) -> Result<Vec<Tensor>, ForwardError> {
        check_shape(x, 0)?;
        let _no_grad = tch::no_grad_guard();
        let mut trunk = self.input(x);
        let mut probs = Vec::with_capacity(TRUNK_LAYERS);
        for layer in 0..TRUNK_LAYERS {
            trunk = self.layer(layer, &trunk);
            probs.push(self.head(layer + 1, &trunk).softmax(-1, Kind::Float));
        }
        Ok(probs)
    }

    /// `x` in the dtype and memory layout the trunk computes in.
    pub fn input(&self, x: &Tensor) -> Tensor {
        let x = x.to_kind(self.kind);
        if self.channels_last {
            to_channels_last(&x)
        } else {
            x
        }
    }

    /// Trunk layer `layer` (0..16) on the output of the one before (see [`Self::input`]).
    pub fn layer(&self, layer: usize, x: &Tensor) -> Tensor {
        self.trunk[layer].forward(x)
    }

    /// The logits [N, 10] (F32) of exit `exit` (1..=16) on the output of
    /// trunk layer `exit - 1`; exit 16 is the network's final head.
    pub fn head(&self, exit: usize, trunk: &Tensor) -> Tensor {
        if exit == TRUNK_LAYERS {
            // avg_pool k4 (stride 4): 5x5 -> 1x1; dropout is the identity at inference.
            return trunk
                .avg_pool2d([4, 4], [4, 4], [0, 0], false, true, None)
                .flatten(1, -1)
                .apply(&self.fc)
                .to_kind(Kind::Float);
        }
        self.exits[exit - 1].forward(trunk).to_kind(Kind::Float)
    }
}

/// Checks that `x` is [N, C, H, W] as trunk layer `start` expects.
fn check_shape(x: &Tensor, start: usize) -> Result<(), ForwardError> {
    let expected = BOUNDARY_SHAPES[start].map(|d| d as i64);
    let shape = x.size();
    if shape.len() != 4 || shape[0] < 1 || shape[1..] != expected {
        return Err(ForwardError::BadShape {
            start,
            got: shape,
            expected,
        });
    }
    Ok(())
}
