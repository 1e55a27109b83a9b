//! The network: weights, and the two implementations of ResNet50 the server chooses from.
//!
//! [`weights`] reads and checks a safetensors file in torchvision's names (or writes random ones
//! for tests); [`fold`] folds each BatchNorm into its convolution; [`candle`] is the network as
//! candle tensors, run on GPUs; [`cpu`] is our NHWC network for CPUs. [`Model`] is what the
//! server runs: one of the two, picked by the device ([`device`]). [`labels`] names the 1000
//! classes and ranks a row of logits. Nothing here knows about HTTP or the request queue; the
//! only thing it takes from outside is the input's shape (`preprocess`).

pub mod candle;
pub mod cpu;
pub mod device;
pub mod fold;
pub mod gpu;
pub mod labels;
pub mod weights;

use candle_core::{DType, Device, Result};

pub use self::candle::{ResNet50, stock};
use self::cpu::CpuResNet50;
use self::weights::Weights;
pub use crate::preprocess::{INPUT_LEN, INPUT_SIZE};

/// What the server runs: the NHWC network ([`cpu`]) on the CPU, the candle network on a GPU.
pub enum Model {
    Cpu(Box<CpuResNet50>),
    Candle {
        net: ResNet50,
        device: Device,
    },
    /// The cuDNN plan ([`gpu`]): one lane here; the engine gets more from [`Model::lanes`].
    #[cfg(feature = "cuda")]
    Cudnn {
        net: std::sync::Arc<gpu::cudnn::GpuNet>,
        lane: Box<std::sync::Mutex<gpu::cudnn::Lane>>,
        max_batch: usize,
    },
}

impl Model {
    /// The server's choice for `device`; on a GPU the convolutions run in f16.
    pub fn new(w: &Weights, device: &Device) -> Result<Self> {
        Self::with_gpu_dtype(w, device, DType::F16)
    }

    /// As [`Model::new`], with the GPU network's convolutions in `gpu_dtype`.
    pub fn with_gpu_dtype(w: &Weights, device: &Device, gpu_dtype: DType) -> Result<Self> {
        Ok(match device {
            Device::Cpu => Self::Cpu(Box::new(CpuResNet50::new(w)?)),
            _ => Self::Candle {
                net: ResNet50::with_dtype(w, gpu_dtype)?,
                device: device.clone(),
            },
        })
    }

    /// (n, 3, 224, 224) normalised images, flat → (n, classes) logits, flat.
    pub fn forward_flat(&self, input: Vec<f32>, n: usize) -> Result<Vec<f32>> {
        match self {
            Self::Cpu(net) => {
                if input.len() != n * INPUT_LEN {
                    candle_core::bail!("input holds {} values, not {n} images", input.len());
                }
                Ok(net.forward(&input, n))
            }
            Self::Candle { net, device } => self::candle::forward_flat(net, input, n, device),
            #[cfg(feature = "cuda")]
            Self::Cudnn { lane, .. } => lane
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .forward_parts(&[&input], n)
                .map_err(|e| candle_core::Error::Msg(format!("{e:#}"))),
        }
    }

    /// The cuDNN network on GPU `ordinal` for batches of up to `max_batch` (`w` on the CPU).
    #[cfg(feature = "cuda")]
    pub fn cudnn(
        w: &Weights,
        ordinal: usize,
        opts: gpu::cudnn::GpuOptions,
        max_batch: usize,
    ) -> anyhow::Result<Self> {
        let net = gpu::cudnn::GpuNet::new(w, ordinal, opts)?;
        let lane = gpu::cudnn::Lane::new(net.clone(), max_batch)?;
        Ok(Self::Cudnn {
            net,
            lane: Box::new(std::sync::Mutex::new(lane)),
            max_batch,
        })
    }

    /// Which implementation runs, for logs and /version.
    pub fn implementation(&self) -> &'static str {
        match self {
            Self::Cpu(_) => "cpu-nhwc",
            Self::Candle { net, .. } if net.dtype() == DType::F16 => "candle-f16",
            Self::Candle { .. } => "candle",
            #[cfg(feature = "cuda")]
            Self::Cudnn { .. } => "cudnn-f16",
        }
    }
}
