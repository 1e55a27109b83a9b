//! Which device the network runs on, and its name in logs, `/health` and `/version`.

use candle_core::Device;

use crate::config::DevicePref;

/// CPU unless asked otherwise; `auto` takes GPU 0 when this is a CUDA build and one is usable.
pub fn select_device(pref: DevicePref) -> anyhow::Result<Device> {
    match pref {
        DevicePref::Cpu => Ok(Device::Cpu),
        DevicePref::Cuda => Device::new_cuda(0).map_err(|e| {
            anyhow::anyhow!(
                "DEVICE=cuda but no CUDA device can be used: {e}{}",
                if cfg!(feature = "cuda") {
                    ""
                } else {
                    " (this binary was built without the `cuda` feature)"
                }
            )
        }),
        DevicePref::Auto if cfg!(feature = "cuda") => Ok(Device::new_cuda(0).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "no usable GPU; falling back to CPU");
            Device::Cpu
        })),
        DevicePref::Auto => Ok(Device::Cpu),
    }
}

pub fn device_name(d: &Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(_) => "cuda:0".into(),
        Device::Metal(_) => "metal:0".into(),
    }
}
