//! ResNet50 weights in torchvision's `state_dict` names: the list of tensors the model needs,
//! loading and checking a safetensors file, and deterministic random weights for tests/demos.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

/// Metadata key that marks weights written by [`write_random`] (value: `seed=N`); the server
/// warns when it serves them. One key only: safetensors writes metadata in HashMap order, and a
/// single entry keeps the file byte-for-byte reproducible.
pub const RANDOM_WEIGHTS_KEY: &str = "inference.random_weights";

/// (name, blocks, width, first-block stride) of ResNet50's four stages.
pub const STAGES: [(&str, usize, usize, usize); 4] = [
    ("layer1", 3, 64, 1),
    ("layer2", 4, 128, 2),
    ("layer3", 6, 256, 2),
    ("layer4", 3, 512, 2),
];
pub const EXPANSION: usize = 4;

/// One bottleneck block as torchvision names it.
pub struct BlockSpec {
    /// Tensor name prefix, e.g. `layer2.0`.
    pub prefix: String,
    /// Channels in, of the 3×3 conv (`width`), and out (`width × EXPANSION`).
    pub in_c: usize,
    pub width: usize,
    pub out_c: usize,
    /// Stride of the block (torchvision v1.5 puts it on the 3×3 conv and the downsample).
    pub stride: usize,
    /// The first block of each stage has a downsample branch (1×1 conv + BatchNorm).
    pub downsample: bool,
}

/// ResNet50's 16 bottleneck blocks, in order.
pub fn blocks() -> Vec<BlockSpec> {
    let mut out = Vec::new();
    let mut in_c = 64;
    for (layer, count, width, stride) in STAGES {
        for b in 0..count {
            let out_c = width * EXPANSION;
            out.push(BlockSpec {
                prefix: format!("{layer}.{b}"),
                in_c,
                width,
                out_c,
                stride: if b == 0 { stride } else { 1 },
                downsample: b == 0,
            });
            in_c = out_c;
        }
    }
    out
}
pub const NUM_CLASSES: usize = 1000;

/// What a tensor is, which decides how random weights are drawn for it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Role {
    Conv,
    BnWeight,
    BnBias,
    BnMean,
    BnVar,
    FcWeight,
    FcBias,
}

#[derive(Clone, Debug)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub role: Role,
}

fn conv(name: String, out_c: usize, in_c: usize, k: usize) -> TensorSpec {
    TensorSpec {
        name,
        shape: vec![out_c, in_c, k, k],
        role: Role::Conv,
    }
}

fn bn(specs: &mut Vec<TensorSpec>, prefix: &str, c: usize) {
    for (suffix, role) in [
        ("weight", Role::BnWeight),
        ("bias", Role::BnBias),
        ("running_mean", Role::BnMean),
        ("running_var", Role::BnVar),
    ] {
        specs.push(TensorSpec {
            name: format!("{prefix}.{suffix}"),
            shape: vec![c],
            role,
        });
    }
}

/// Every tensor ResNet50 reads, in torchvision order, with its expected shape.
pub fn resnet50_specs() -> Vec<TensorSpec> {
    let mut specs = vec![conv("conv1.weight".into(), 64, 3, 7)];
    bn(&mut specs, "bn1", 64);
    for BlockSpec {
        prefix: p,
        in_c,
        width,
        out_c,
        downsample,
        ..
    } in blocks()
    {
        specs.push(conv(format!("{p}.conv1.weight"), width, in_c, 1));
        bn(&mut specs, &format!("{p}.bn1"), width);
        specs.push(conv(format!("{p}.conv2.weight"), width, width, 3));
        bn(&mut specs, &format!("{p}.bn2"), width);
        specs.push(conv(format!("{p}.conv3.weight"), out_c, width, 1));
        bn(&mut specs, &format!("{p}.bn3"), out_c);
        if downsample {
            specs.push(conv(format!("{p}.downsample.0.weight"), out_c, in_c, 1));
            bn(&mut specs, &format!("{p}.downsample.1"), out_c);
        }
    }
    specs.push(TensorSpec {
        name: "fc.weight".into(),
        shape: vec![NUM_CLASSES, 2048],
        role: Role::FcWeight,
    });
    specs.push(TensorSpec {
        name: "fc.bias".into(),
        shape: vec![NUM_CLASSES],
        role: Role::FcBias,
    });
    specs
}

/// A weights problem, always naming the file and, where there is one, the tensor.
#[derive(Debug, thiserror::Error)]
#[error("{}: {}{message}", file.display(), tensor.as_ref().map(|t| format!("tensor `{t}`: ")).unwrap_or_default())]
pub struct WeightsError {
    pub file: PathBuf,
    pub tensor: Option<String>,
    pub message: String,
}

impl WeightsError {
    fn file(file: &Path, message: impl Into<String>) -> Self {
        Self {
            file: file.to_owned(),
            tensor: None,
            message: message.into(),
        }
    }
    fn tensor(file: &Path, tensor: &str, message: impl Into<String>) -> Self {
        Self {
            file: file.to_owned(),
            tensor: Some(tensor.to_owned()),
            message: message.into(),
        }
    }
}

/// Checked weights, as f32 tensors on the target device, keyed by torchvision name.
pub struct Weights {
    pub tensors: HashMap<String, Tensor>,
    /// `Some(seed)` when the file was written by [`write_random`]: not a trained model.
    pub random_seed: Option<String>,
    /// SHA-256 of the file, hex.
    pub sha256: String,
}

/// Reads `path` and checks that every tensor ResNet50 needs is there with the right shape.
pub fn load(path: &Path, device: &Device) -> Result<Weights, WeightsError> {
    let bytes = std::fs::read(path)
        .map_err(|e| WeightsError::file(path, format!("cannot read weights: {e}")))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| WeightsError::file(path, format!("not a valid safetensors file: {e}")))?;
    let (_, header) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| WeightsError::file(path, format!("not a valid safetensors file: {e}")))?;
    let meta = header.metadata().clone().unwrap_or_default();
    let mut tensors = HashMap::new();
    for spec in resnet50_specs() {
        let view = st.tensor(&spec.name).map_err(|_| {
            WeightsError::tensor(
                path,
                &spec.name,
                "missing (is this a torchvision ResNet50 state_dict?)",
            )
        })?;
        if view.shape() != spec.shape.as_slice() {
            return Err(WeightsError::tensor(
                path,
                &spec.name,
                format!("expected shape {:?}, found {:?}", spec.shape, view.shape()),
            ));
        }
        let t =
            to_f32_tensor(&view, device).map_err(|m| WeightsError::tensor(path, &spec.name, m))?;
        tensors.insert(spec.name, t);
    }
    Ok(Weights {
        tensors,
        random_seed: meta
            .get(RANDOM_WEIGHTS_KEY)
            .map(|v| v.trim_start_matches("seed=").to_string()),
        sha256: sha256_hex(&bytes),
    })
}

fn to_f32_tensor(view: &TensorView<'_>, device: &Device) -> Result<Tensor, String> {
    let dtype = match view.dtype() {
        Dtype::F32 => DType::F32,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        other => {
            return Err(format!(
                "unsupported dtype {other:?} (need F32, F16 or BF16)"
            ));
        }
    };
    let t = Tensor::from_raw_buffer(view.data(), dtype, view.shape(), &Device::Cpu)
        .map_err(|e| e.to_string())?;
    let t = t.to_dtype(DType::F32).map_err(|e| e.to_string())?;
    // NaN/inf weights would silently turn every answer into garbage.
    let finite = t
        .flatten_all()
        .and_then(|f| f.to_vec1::<f32>())
        .map_err(|e| e.to_string())?
        .iter()
        .all(|v| v.is_finite());
    if !finite {
        return Err("contains NaN or infinite values".into());
    }
    t.to_device(device).map_err(|e| e.to_string())
}

/// Bytes as lowercase hex, as `sha256sum` prints a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The file's SHA-256, hex: what `sha256sum` prints, so a user can check which file a pod runs.
fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(bytes))
}

/// SplitMix64: tiny, well-known and fully specified here, so the same seed gives the same weights
/// on every platform and every version of every dependency.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^ (z >> 31)
    }
    /// Uniform in (0, 1).
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let (u1, u2) = (self.uniform(), self.uniform());
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// Per-tensor stream: independent of the order tensors are generated in.
fn rng_for(seed: u64, name: &str) -> SplitMix64 {
    let mut h = seed ^ 0x243F6A8885A308D3;
    for b in name.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100000001b3);
    }
    SplitMix64(h)
}

/// Draws one tensor. The scales keep activations O(1) through all 16 blocks so that logits
/// depend on the image (a degenerate net would make the parity test blind).
fn random_values(spec: &TensorSpec, seed: u64) -> Vec<f32> {
    let mut rng = rng_for(seed, &spec.name);
    let n: usize = spec.shape.iter().product();
    let fan_in: usize = spec.shape.iter().skip(1).product();
    let is_block_out =
        spec.name.ends_with(".bn3.weight") || spec.name.ends_with("downsample.1.weight");
    (0..n)
        .map(|_| {
            let v = match spec.role {
                // He init on fan-in keeps the variance through conv + ReLU.
                Role::Conv => rng.normal() * (2.0 / fan_in as f64).sqrt(),
                // Damped residual branches stop the variance from growing block after block.
                Role::BnWeight if is_block_out => 0.2 + 0.3 * rng.uniform(),
                Role::BnWeight => 0.8 + 0.4 * rng.uniform(),
                Role::BnBias => 0.1 * rng.normal(),
                Role::BnMean => 0.1 * rng.normal(),
                Role::BnVar => 0.5 + rng.uniform(),
                Role::FcWeight => rng.normal() * (1.0 / fan_in as f64).sqrt() * 4.0,
                Role::FcBias => 0.01 * rng.normal(),
            };
            v as f32
        })
        .collect()
}

/// Writes deterministic random ResNet50 weights (torchvision names, f32) and marks them as such.
pub fn write_random(path: &Path, seed: u64) -> anyhow::Result<()> {
    let specs = resnet50_specs();
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = specs
        .iter()
        .map(|s| {
            let bytes = random_values(s, seed)
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            (s.name.clone(), s.shape.clone(), bytes)
        })
        .collect();
    let views = data
        .iter()
        .map(|(name, shape, bytes)| {
            Ok((
                name.as_str(),
                TensorView::new(Dtype::F32, shape.clone(), bytes)?,
            ))
        })
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    let metadata = HashMap::from([(RANDOM_WEIGHTS_KEY.to_string(), format!("seed={seed}"))]);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    // Write then rename, so a crash never leaves a half-written file that looks valid.
    let tmp = path.with_extension("safetensors.partial");
    safetensors::serialize_to_file(views, Some(metadata), &tmp)?;
    // safetensors writes through a 0600 temporary file; weights are no secret and are mounted
    // into containers that run as another user (65532), so make them readable like any file.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))?;
    }
    std::fs::rename(&tmp, path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_list_matches_torchvision_resnet50() {
        let specs = resnet50_specs();
        // torchvision resnet50 has 25,557,032 parameters; running stats add 2 * 26,560.
        let params: usize = specs
            .iter()
            .filter(|s| !matches!(s.role, Role::BnMean | Role::BnVar))
            .map(|s| s.shape.iter().product::<usize>())
            .sum();
        assert_eq!(params, 25_557_032);
        // 53 convs, 53 BatchNorms x 4 tensors, fc weight and bias (torchvision adds 53 num_batches_tracked).
        assert_eq!(specs.len(), 53 + 53 * 4 + 2);
        assert!(
            specs
                .iter()
                .any(|s| s.name == "layer3.2.conv2.weight" && s.shape == [256, 256, 3, 3])
        );
        assert!(
            specs
                .iter()
                .any(|s| s.name == "layer4.0.downsample.0.weight" && s.shape == [2048, 1024, 1, 1])
        );
    }

    #[test]
    fn random_weights_file_is_reproducible_byte_for_byte() {
        let dir = std::env::temp_dir().join(format!("weights-repro-{}", std::process::id()));
        let (a, b) = (dir.join("a.safetensors"), dir.join("b.safetensors"));
        write_random(&a, 3).unwrap();
        write_random(&b, 3).unwrap();
        assert!(
            std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(),
            "same seed, different bytes"
        );
        let w = load(&a, &Device::Cpu).unwrap();
        assert_eq!(w.random_seed.as_deref(), Some("3"));
        // Readable by a container's non-root user when mounted.
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&a).unwrap().permissions().mode() & 0o777,
            0o644
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn random_weights_are_deterministic_and_seed_dependent() {
        let spec = &resnet50_specs()[0];
        assert_eq!(random_values(spec, 7), random_values(spec, 7));
        assert_ne!(random_values(spec, 7), random_values(spec, 8));
    }
}
