//! BatchNorm folded into the convolution before it, once at load: both networks then run
//! conv + bias (+ ReLU) per layer instead of conv + four BatchNorm passes.

use candle_core::{DType, Result, Tensor};

use super::weights::Weights;

const BN_EPS: f64 = 1e-5;

/// Folds `bn` into `conv`: (weight (cout, cin, kh, kw), bias (cout,)), both f32. The fold is done
/// in f64 so the folded weights round once, not at every intermediate step.
pub fn folded_conv(w: &Weights, conv: &str, bn: &str) -> Result<(Tensor, Tensor)> {
    let get = |n: &str| {
        w.tensors
            .get(n)
            .map(|t| t.to_dtype(DType::F64))
            .ok_or_else(|| candle_core::Error::Msg(format!("weights lack `{n}`")))?
    };
    let weight = get(&format!("{conv}.weight"))?;
    let gamma = get(&format!("{bn}.weight"))?;
    let beta = get(&format!("{bn}.bias"))?;
    let mean = get(&format!("{bn}.running_mean"))?;
    let var = get(&format!("{bn}.running_var"))?;
    let scale = (gamma / (var + BN_EPS)?.sqrt()?)?;
    let c = scale.dim(0)?;
    let weight = weight
        .broadcast_mul(&scale.reshape((c, 1, 1, 1))?)?
        .to_dtype(DType::F32)?;
    let bias = (beta - (mean * &scale)?)?.to_dtype(DType::F32)?;
    Ok((weight, bias))
}
