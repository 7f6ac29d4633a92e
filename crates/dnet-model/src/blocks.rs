//! Building blocks of the network: BasicConv2d and the Inception blocks A-E.
//!
//! Variable paths are the PyTorch attribute names (`branch1x1` / `conv`,
//! `bn`), so the original state_dict maps one to one.

use tch::nn;
use tch::{Kind, Tensor};

/// BatchNorm epsilon of every BasicConv2d.
const BN_EPS: f64 = 0.001;

/// Conv2d (no bias) -> BatchNorm2d(eps 0.001, running statistics) -> ReLU.
///
/// The convolution and the batch norm hold the state_dict's variables while
/// the weights load; [`BasicConv2d::fold`] then merges them into one
/// convolution with a bias, which computes the same function with one pass
/// over the activations instead of two.
#[derive(Debug)]
pub struct BasicConv2d {
    conv: nn::Conv2D,
    bn: nn::BatchNorm,
    stride: [i64; 2],
    padding: [i64; 2],
    /// (weight, bias) of the folded convolution, once folded.
    folded: Option<(Tensor, Tensor)>,
}

impl BasicConv2d {
    /// A square kernel `k` with square stride and padding.
    pub fn new(p: &nn::Path, c_in: i64, c_out: i64, k: i64, stride: i64, pad: i64) -> Self {
        Self::rect(p, c_in, c_out, [k, k], stride, [pad, pad])
    }

    /// A (kh, kw) kernel with (ph, pw) padding.
    pub fn rect(p: &nn::Path, c_in: i64, c_out: i64, k: [i64; 2], stride: i64, pad: [i64; 2]) -> Self {
        let config = nn::ConvConfigND::<[i64; 2]> {
            stride: [stride, stride],
            padding: pad,
            bias: false,
            ..Default::default()
        };
        let bn_config = nn::BatchNormConfig {
            eps: BN_EPS,
            ..Default::default()
        };
        Self {
            conv: nn::conv(p / "conv", c_in, c_out, k, config),
            bn: nn::batch_norm2d(p / "bn", c_out, bn_config),
            stride: [stride, stride],
            padding: pad,
            folded: None,
        }
    }

    /// Merges the eval batch norm into the convolution:
    /// `w' = w * g / sqrt(var + eps)` per output channel, `b' = beta - mean * g / sqrt(var + eps)`.
    /// Computed in F32 on the weights' device; then stored as `kind`, in
    /// channels-last layout when `channels_last`.
    pub fn fold(&mut self, kind: Kind, channels_last: bool) {
        let _no_grad = tch::no_grad_guard();
        let gamma = self
            .bn
            .ws
            .as_ref()
            .map_or_else(|| self.bn.running_var.ones_like(), Tensor::shallow_clone);
        let beta = self
            .bn
            .bs
            .as_ref()
            .map_or_else(|| self.bn.running_mean.zeros_like(), Tensor::shallow_clone);
        let scale = gamma / (&self.bn.running_var + BN_EPS).sqrt();
        let weight = &self.conv.ws * scale.view([-1, 1, 1, 1]);
        let bias = beta - &self.bn.running_mean * &scale;
        let weight = weight.to_kind(kind);
        let weight = if channels_last {
            to_channels_last(&weight)
        } else {
            weight
        };
        self.folded = Some((weight, bias.to_kind(kind)));
    }

    pub fn forward(&self, xs: &Tensor) -> Tensor {
        match &self.folded {
            Some((weight, bias)) => xs
                .conv2d(weight, Some(bias), self.stride, self.padding, [1, 1], 1)
                .relu(),
            None => xs.apply(&self.conv).apply_t(&self.bn, false).relu(),
        }
    }
}

/// The same tensor (same shape and values) stored channels-last (NHWC in
/// memory): oneDNN's convolutions run fastest on it, and keep it.
pub fn to_channels_last(xs: &Tensor) -> Tensor {
    xs.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

/// `x.max_pool2d(k, s)` without padding, as `F.max_pool2d(x, k, s)`.
pub fn max_pool(xs: &Tensor, k: i64, s: i64) -> Tensor {
    xs.max_pool2d([k, k], [s, s], [0, 0], [1, 1], false)
}

/// `F.avg_pool2d(x, 3, stride=1, padding=1)` (count_include_pad, as PyTorch's default).
fn avg_pool_3x3_same(xs: &Tensor) -> Tensor {
    xs.avg_pool2d([3, 3], [1, 1], [1, 1], false, true, None)
}

/// Applies a chain of convolutions in order.
fn chain(xs: &Tensor, convs: &[BasicConv2d]) -> Tensor {
    convs.iter().fold(xs.shallow_clone(), |x, conv| conv.forward(&x))
}

/// One trunk layer: an Inception block, a BasicConv2d, or a BasicConv2d then max-pool.
// Sixteen of these are built once per model: variant sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Block {
    Conv(BasicConv2d),
    /// BasicConv2d followed by max_pool k3 s1.
    ConvPool(BasicConv2d),
    A(InceptionA),
    B(InceptionB),
    C(InceptionC),
    D(InceptionD),
    E(InceptionE),
}

impl Block {
    /// Every BasicConv2d of the layer.
    pub fn convs_mut(&mut self) -> Vec<&mut BasicConv2d> {
        match self {
            Block::Conv(conv) | Block::ConvPool(conv) => vec![conv],
            Block::A(b) => [&mut b.branch1x1, &mut b.branch_pool]
                .into_iter()
                .chain(b.branch5x5.iter_mut())
                .chain(b.branch3x3dbl.iter_mut())
                .collect(),
            Block::B(b) => std::iter::once(&mut b.branch3x3)
                .chain(b.branch3x3dbl.iter_mut())
                .collect(),
            Block::C(b) => [&mut b.branch1x1, &mut b.branch_pool]
                .into_iter()
                .chain(b.branch7x7.iter_mut())
                .chain(b.branch7x7dbl.iter_mut())
                .collect(),
            Block::D(b) => b.branch3x3.iter_mut().chain(b.branch7x7x3.iter_mut()).collect(),
            Block::E(b) => [
                &mut b.branch1x1,
                &mut b.branch3x3_1,
                &mut b.branch3x3_2a,
                &mut b.branch3x3_2b,
                &mut b.branch3x3dbl_3a,
                &mut b.branch3x3dbl_3b,
                &mut b.branch_pool,
            ]
            .into_iter()
            .chain(b.branch3x3dbl.iter_mut())
            .collect(),
        }
    }

    pub fn forward(&self, xs: &Tensor) -> Tensor {
        match self {
            Block::Conv(conv) => conv.forward(xs),
            Block::ConvPool(conv) => max_pool(&conv.forward(xs), 3, 1),
            Block::A(block) => block.forward(xs),
            Block::B(block) => block.forward(xs),
            Block::C(block) => block.forward(xs),
            Block::D(block) => block.forward(xs),
            Block::E(block) => block.forward(xs),
        }
    }
}

#[derive(Debug)]
pub struct InceptionA {
    branch1x1: BasicConv2d,
    branch5x5: [BasicConv2d; 2],
    branch3x3dbl: [BasicConv2d; 3],
    branch_pool: BasicConv2d,
}

impl InceptionA {
    pub fn new(p: &nn::Path, c_in: i64, pool_features: i64) -> Self {
        Self {
            branch1x1: BasicConv2d::new(&(p / "branch1x1"), c_in, 64, 1, 1, 0),
            branch5x5: [
                BasicConv2d::new(&(p / "branch5x5_1"), c_in, 48, 1, 1, 0),
                BasicConv2d::new(&(p / "branch5x5_2"), 48, 64, 5, 1, 2),
            ],
            branch3x3dbl: [
                BasicConv2d::new(&(p / "branch3x3dbl_1"), c_in, 64, 1, 1, 0),
                BasicConv2d::new(&(p / "branch3x3dbl_2"), 64, 96, 3, 1, 1),
                BasicConv2d::new(&(p / "branch3x3dbl_3"), 96, 96, 3, 1, 1),
            ],
            branch_pool: BasicConv2d::new(&(p / "branch_pool"), c_in, pool_features, 1, 1, 0),
        }
    }

    fn forward(&self, xs: &Tensor) -> Tensor {
        Tensor::cat(
            &[
                self.branch1x1.forward(xs),
                chain(xs, &self.branch5x5),
                chain(xs, &self.branch3x3dbl),
                self.branch_pool.forward(&avg_pool_3x3_same(xs)),
            ],
            1,
        )
    }
}

#[derive(Debug)]
pub struct InceptionB {
    branch3x3: BasicConv2d,
    branch3x3dbl: [BasicConv2d; 3],
}

impl InceptionB {
    pub fn new(p: &nn::Path, c_in: i64) -> Self {
        Self {
            branch3x3: BasicConv2d::new(&(p / "branch3x3"), c_in, 384, 3, 2, 0),
            branch3x3dbl: [
                BasicConv2d::new(&(p / "branch3x3dbl_1"), c_in, 64, 1, 1, 0),
                BasicConv2d::new(&(p / "branch3x3dbl_2"), 64, 96, 3, 1, 1),
                BasicConv2d::new(&(p / "branch3x3dbl_3"), 96, 96, 3, 2, 0),
            ],
        }
    }

    fn forward(&self, xs: &Tensor) -> Tensor {
        Tensor::cat(
            &[
                self.branch3x3.forward(xs),
                chain(xs, &self.branch3x3dbl),
                max_pool(xs, 3, 2),
            ],
            1,
        )
    }
}

#[derive(Debug)]
pub struct InceptionC {
    branch1x1: BasicConv2d,
    branch7x7: [BasicConv2d; 3],
    branch7x7dbl: [BasicConv2d; 5],
    branch_pool: BasicConv2d,
}

impl InceptionC {
    pub fn new(p: &nn::Path, c_in: i64, c7: i64) -> Self {
        let (wide, tall) = (([1, 7], [0, 3]), ([7, 1], [3, 0]));
        let conv = |name: &str, c_in, c_out, (k, pad): ([i64; 2], [i64; 2])| {
            BasicConv2d::rect(&(p / name), c_in, c_out, k, 1, pad)
        };
        Self {
            branch1x1: BasicConv2d::new(&(p / "branch1x1"), c_in, 192, 1, 1, 0),
            branch7x7: [
                BasicConv2d::new(&(p / "branch7x7_1"), c_in, c7, 1, 1, 0),
                conv("branch7x7_2", c7, c7, wide),
                conv("branch7x7_3", c7, 192, tall),
            ],
            branch7x7dbl: [
                BasicConv2d::new(&(p / "branch7x7dbl_1"), c_in, c7, 1, 1, 0),
                conv("branch7x7dbl_2", c7, c7, tall),
                conv("branch7x7dbl_3", c7, c7, wide),
                conv("branch7x7dbl_4", c7, c7, tall),
                conv("branch7x7dbl_5", c7, 192, wide),
            ],
            branch_pool: BasicConv2d::new(&(p / "branch_pool"), c_in, 192, 1, 1, 0),
        }
    }

    fn forward(&self, xs: &Tensor) -> Tensor {
        Tensor::cat(
            &[
                self.branch1x1.forward(xs),
                chain(xs, &self.branch7x7),
                chain(xs, &self.branch7x7dbl),
                self.branch_pool.forward(&avg_pool_3x3_same(xs)),
            ],
            1,
        )
    }
}

#[derive(Debug)]
pub struct InceptionD {
    branch3x3: [BasicConv2d; 2],
    branch7x7x3: [BasicConv2d; 4],
}

impl InceptionD {
    pub fn new(p: &nn::Path, c_in: i64) -> Self {
        Self {
            branch3x3: [
                BasicConv2d::new(&(p / "branch3x3_1"), c_in, 192, 1, 1, 0),
                BasicConv2d::new(&(p / "branch3x3_2"), 192, 320, 3, 2, 0),
            ],
            branch7x7x3: [
                BasicConv2d::new(&(p / "branch7x7x3_1"), c_in, 192, 1, 1, 0),
                BasicConv2d::rect(&(p / "branch7x7x3_2"), 192, 192, [1, 7], 1, [0, 3]),
                BasicConv2d::rect(&(p / "branch7x7x3_3"), 192, 192, [7, 1], 1, [3, 0]),
                BasicConv2d::new(&(p / "branch7x7x3_4"), 192, 192, 3, 2, 0),
            ],
        }
    }

    fn forward(&self, xs: &Tensor) -> Tensor {
        Tensor::cat(
            &[
                chain(xs, &self.branch3x3),
                chain(xs, &self.branch7x7x3),
                max_pool(xs, 3, 2),
            ],
            1,
        )
    }
}

#[derive(Debug)]
pub struct InceptionE {
    branch1x1: BasicConv2d,
    branch3x3_1: BasicConv2d,
    branch3x3_2a: BasicConv2d,
    branch3x3_2b: BasicConv2d,
    branch3x3dbl: [BasicConv2d; 2],
    branch3x3dbl_3a: BasicConv2d,
    branch3x3dbl_3b: BasicConv2d,
    branch_pool: BasicConv2d,
}

impl InceptionE {
    pub fn new(p: &nn::Path, c_in: i64) -> Self {
        Self {
            branch1x1: BasicConv2d::new(&(p / "branch1x1"), c_in, 320, 1, 1, 0),
            branch3x3_1: BasicConv2d::new(&(p / "branch3x3_1"), c_in, 384, 1, 1, 0),
            branch3x3_2a: BasicConv2d::rect(&(p / "branch3x3_2a"), 384, 384, [1, 3], 1, [0, 1]),
            branch3x3_2b: BasicConv2d::rect(&(p / "branch3x3_2b"), 384, 384, [3, 1], 1, [1, 0]),
            branch3x3dbl: [
                BasicConv2d::new(&(p / "branch3x3dbl_1"), c_in, 448, 1, 1, 0),
                BasicConv2d::new(&(p / "branch3x3dbl_2"), 448, 384, 3, 1, 1),
            ],
            branch3x3dbl_3a: BasicConv2d::rect(&(p / "branch3x3dbl_3a"), 384, 384, [1, 3], 1, [0, 1]),
            branch3x3dbl_3b: BasicConv2d::rect(&(p / "branch3x3dbl_3b"), 384, 384, [3, 1], 1, [1, 0]),
            branch_pool: BasicConv2d::new(&(p / "branch_pool"), c_in, 192, 1, 1, 0),
        }
    }

    fn forward(&self, xs: &Tensor) -> Tensor {
        let b3 = self.branch3x3_1.forward(xs);
        let b3 = Tensor::cat(&[self.branch3x3_2a.forward(&b3), self.branch3x3_2b.forward(&b3)], 1);
        let dbl = chain(xs, &self.branch3x3dbl);
        let dbl = Tensor::cat(
            &[self.branch3x3dbl_3a.forward(&dbl), self.branch3x3dbl_3b.forward(&dbl)],
            1,
        );
        Tensor::cat(
            &[
                self.branch1x1.forward(xs),
                b3,
                dbl,
                self.branch_pool.forward(&avg_pool_3x3_same(xs)),
            ],
            1,
        )
    }
}
