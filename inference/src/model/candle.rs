//! ResNet50 (torchvision v1.5 layout) as candle tensors, every BatchNorm folded into the
//! convolution before it ([`super::fold`]). This is the GPU path and the reference the CPU
//! network (`cpu`) is tested against. [`stock`] builds candle-transformers' unmodified resnet50
//! from the same weights, for tests and benchmarks.

use candle_core::{D, DType, Device, Result, Tensor};
use candle_nn::VarBuilder;

use super::fold::folded_conv;
use super::weights::{self, NUM_CLASSES, Weights};
use crate::preprocess::INPUT_SIZE;

/// A convolution with its BatchNorm folded in: `y = conv(x, w * s) + (beta - mean * s)`,
/// `s = gamma / sqrt(var + eps)`.
struct FoldedConv {
    weight: Tensor,
    bias: Tensor, // shape (1, C, 1, 1) for a broadcast add
    stride: usize,
    padding: usize,
}

impl FoldedConv {
    fn new(w: &Weights, conv: &str, bn: &str, stride: usize, padding: usize) -> Result<Self> {
        let (weight, bias) = folded_conv(w, conv, bn)?;
        let c = bias.dim(0)?;
        Ok(Self {
            weight,
            bias: bias.reshape((1, c, 1, 1))?,
            stride,
            padding,
        })
    }

    fn forward(&self, x: &Tensor, relu: bool) -> Result<Tensor> {
        let y = x
            .conv2d(&self.weight, self.padding, self.stride, 1, 1)?
            .broadcast_add(&self.bias)?;
        if relu { y.relu() } else { Ok(y) }
    }
}

struct Bottleneck {
    conv1: FoldedConv,
    conv2: FoldedConv,
    conv3: FoldedConv,
    downsample: Option<FoldedConv>,
}

impl Bottleneck {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.conv1.forward(x, true)?;
        let y = self.conv2.forward(&y, true)?;
        let y = self.conv3.forward(&y, false)?;
        let shortcut = match &self.downsample {
            Some(d) => d.forward(x, false)?,
            None => x.clone(),
        };
        (y + shortcut)?.relu()
    }
}

pub struct ResNet50 {
    stem: FoldedConv,
    blocks: Vec<Bottleneck>,
    fc_weight_t: Tensor, // (2048, classes), transposed once at load
    fc_bias: Tensor,
    /// Convolutions' dtype; input is cast to it, pooling and the classifier run in f32.
    dtype: DType,
}

impl ResNet50 {
    pub fn new(w: &Weights) -> Result<Self> {
        let stem = FoldedConv::new(w, "conv1", "bn1", 2, 3)?;
        let mut blocks = Vec::new();
        for spec in weights::blocks() {
            let p = &spec.prefix;
            let conv = |c: &str, bn: &str, stride, pad| {
                FoldedConv::new(w, &format!("{p}.{c}"), &format!("{p}.{bn}"), stride, pad)
            };
            blocks.push(Bottleneck {
                conv1: conv("conv1", "bn1", 1, 0)?,
                // torchvision v1.5: the stride sits on the 3x3 conv.
                conv2: conv("conv2", "bn2", spec.stride, 1)?,
                conv3: conv("conv3", "bn3", 1, 0)?,
                downsample: spec
                    .downsample
                    .then(|| conv("downsample.0", "downsample.1", spec.stride, 0))
                    .transpose()?,
            });
        }
        let fc_weight_t = w.tensors["fc.weight"].t()?.contiguous()?;
        let fc_bias = w.tensors["fc.bias"].clone();
        Ok(Self {
            stem,
            blocks,
            fc_weight_t,
            fc_bias,
            dtype: DType::F32,
        })
    }

    /// The same network with its convolutions in `dtype` (F16 on GPUs: tensor cores, half the
    /// memory traffic). Pooling and the classifier stay f32.
    pub fn with_dtype(w: &Weights, dtype: DType) -> Result<Self> {
        let mut net = Self::new(w)?;
        let cast = |c: &mut FoldedConv| -> Result<()> {
            c.weight = c.weight.to_dtype(dtype)?;
            c.bias = c.bias.to_dtype(dtype)?;
            Ok(())
        };
        cast(&mut net.stem)?;
        for b in &mut net.blocks {
            cast(&mut b.conv1)?;
            cast(&mut b.conv2)?;
            cast(&mut b.conv3)?;
            if let Some(d) = &mut b.downsample {
                cast(d)?;
            }
        }
        net.dtype = dtype;
        Ok(net)
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// `x`: (N, 3, 224, 224) normalised images → (N, 1000) logits.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.stem.forward(&x.to_dtype(self.dtype)?, true)?;
        // Max-pool 3x3/2 with padding 1: the input is post-ReLU (>= 0), so zero padding
        // equals torchvision's -inf padding.
        let y = y
            .pad_with_zeros(2, 1, 1)?
            .pad_with_zeros(3, 1, 1)?
            .max_pool2d_with_stride(3, 2)?;
        let mut y = y;
        for block in &self.blocks {
            y = block.forward(&y)?;
        }
        let pooled = y.to_dtype(DType::F32)?.mean(D::Minus1)?.mean(D::Minus1)?;
        pooled
            .matmul(&self.fc_weight_t)?
            .broadcast_add(&self.fc_bias)
    }
}

/// candle-transformers' resnet50, unmodified (BatchNorm applied per call), on the same weights.
pub fn stock(w: &Weights, device: &Device) -> Result<candle_nn::Func<'static>> {
    let vb = VarBuilder::from_tensors(w.tensors.clone(), DType::F32, device);
    candle_transformers::models::resnet::resnet50(NUM_CLASSES, vb)
}

/// Runs the candle model on a batch held in one flat buffer.
pub fn forward_flat(
    model: &ResNet50,
    input: Vec<f32>,
    n: usize,
    device: &Device,
) -> Result<Vec<f32>> {
    let x =
        Tensor::from_vec(input, (n, 3, INPUT_SIZE, INPUT_SIZE), &Device::Cpu)?.to_device(device)?;
    let logits = model.forward(&x)?;
    logits
        .to_device(&Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f32>()
}
