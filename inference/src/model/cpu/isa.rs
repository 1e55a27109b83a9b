//! Which vector instructions the CPU network runs: detected once at run time, so one binary
//! built for baseline x86-64 uses AVX-512 or AVX2 + FMA where the CPU has them, and a test run
//! can force the narrower ones (`INFERENCE_ISA`).

/// The CPU features each kernel is compiled for (`#[target_feature]` in `packed_gemm` and
/// [`simd_versions!`]): a kernel is chosen only when the CPU has every one of them.
const AVX512_FEATURES: &str = "avx512f,avx512vl,avx2,fma";
const AVX2_FEATURES: &str = "avx2,fma";

/// Which micro-kernels run. Only [`Isa::detect`] and [`Isa::available`] make one, and both
/// check the CPU first: the `unsafe` kernels may rely on it, and nothing outside this folder can
/// name a kernel the CPU lacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Isa(pub(super) Kind);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Avx512,
    Avx2,
    Portable,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Avx512, Kind::Avx2, Kind::Portable];

    fn name(self) -> &'static str {
        match self {
            Kind::Avx512 => "avx512",
            Kind::Avx2 => "avx2",
            Kind::Portable => "portable",
        }
    }

    fn supported(self) -> bool {
        let features = match self {
            Kind::Avx512 => AVX512_FEATURES,
            Kind::Avx2 => AVX2_FEATURES,
            Kind::Portable => return true,
        };
        features.split(',').all(has_feature)
    }
}

#[cfg(target_arch = "x86_64")]
fn has_feature(f: &str) -> bool {
    match f {
        "avx512f" => std::arch::is_x86_feature_detected!("avx512f"),
        "avx512vl" => std::arch::is_x86_feature_detected!("avx512vl"),
        "avx2" => std::arch::is_x86_feature_detected!("avx2"),
        "fma" => std::arch::is_x86_feature_detected!("fma"),
        _ => false,
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn has_feature(_: &str) -> bool {
    false
}

/// Environment variable that forces a kernel (`avx512`, `avx2`, `portable`; `auto` or unset:
/// the best the CPU has), so tests and benchmarks run the narrower kernels on a wide CPU.
pub const ISA_ENV: &str = "INFERENCE_ISA";

impl Isa {
    /// The kernels this process runs: [`ISA_ENV`] when set, else the widest the CPU has.
    /// Decided once. Panics on a bad [`ISA_ENV`]; the server checks it first with
    /// [`Isa::from_env`] and exits with a clear error instead.
    pub fn detect() -> Isa {
        static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *ISA.get_or_init(|| Isa::from_env().unwrap_or_else(|e| panic!("{e}")))
    }

    /// What [`Isa::detect`] will pick, or why [`ISA_ENV`] cannot be honoured.
    pub fn from_env() -> Result<Isa, String> {
        let wanted = std::env::var(ISA_ENV).unwrap_or_default();
        if wanted.is_empty() || wanted == "auto" {
            return Ok(Isa::available()[0]);
        }
        let kind = Kind::ALL
            .into_iter()
            .find(|k| k.name() == wanted)
            .ok_or_else(|| {
                format!("{ISA_ENV}={wanted}: expected auto, avx512, avx2 or portable")
            })?;
        if !kind.supported() {
            return Err(format!(
                "{ISA_ENV}={wanted}: this CPU lacks some of {}",
                match kind {
                    Kind::Avx512 => AVX512_FEATURES,
                    _ => AVX2_FEATURES,
                }
            ));
        }
        Ok(Isa(kind))
    }

    /// Every kernel set this CPU runs, widest first (`Portable` always).
    pub fn available() -> Vec<Isa> {
        Kind::ALL
            .into_iter()
            .filter(|k| k.supported())
            .map(Isa)
            .collect()
    }

    /// `avx512`, `avx2` or `portable`, for logs, `/version` and metrics.
    pub fn name(self) -> &'static str {
        self.0.name()
    }
}

/// Defines `unsafe fn $name(args)` that runs `$body(args)` compiled for AVX-512 or AVX2 + FMA
/// when the CPU has them ([`Isa::detect`]). For plain loops over floats (transforms, copies):
/// the binary targets baseline x86-64, so without this the compiler vectorises them for SSE2 only.
/// `$body` should be `#[inline(always)]` so that it is compiled inside each version.
macro_rules! simd_versions {
    ($(#[$m:meta])* $vis:vis unsafe fn $name:ident = $body:ident ($($arg:ident: $ty:ty),* $(,)?)) => {
        $(#[$m])*
        $vis unsafe fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) {
                    // SAFETY: the caller's promise, forwarded.
                    unsafe { $body($($arg),*) }
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) {
                    // SAFETY: the caller's promise, forwarded.
                    unsafe { $body($($arg),*) }
                }
                match $crate::model::cpu::isa::Isa::detect().0 {
                    // SAFETY: `detect` checked that the CPU has the features each version was
                    // compiled for (AVX512_FEATURES, AVX2_FEATURES).
                    $crate::model::cpu::isa::Kind::Avx512 => return unsafe { avx512($($arg),*) },
                    $crate::model::cpu::isa::Kind::Avx2 => return unsafe { avx2($($arg),*) },
                    $crate::model::cpu::isa::Kind::Portable => {}
                }
            }
            // SAFETY: the caller's promise, forwarded.
            unsafe { $body($($arg),*) }
        }
    };
}
pub(crate) use simd_versions;
