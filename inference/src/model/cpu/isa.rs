//! Which vector instructions the CPU network runs: detected once at run time, so one binary
//! built for baseline x86-64 uses AVX-512 or AVX2 + FMA where the CPU has them.

/// Which micro-kernel runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Avx512,
    Avx2,
    Portable,
}

impl Isa {
    /// The best kernel this CPU runs (checked once).
    pub fn detect() -> Isa {
        static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *ISA.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                if std::arch::is_x86_feature_detected!("avx512f") {
                    return Isa::Avx512;
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    return Isa::Avx2;
                }
            }
            Isa::Portable
        })
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
                match $crate::model::cpu::isa::Isa::detect() {
                    // SAFETY: the CPU has the features each version was compiled for.
                    $crate::model::cpu::isa::Isa::Avx512 => return unsafe { avx512($($arg),*) },
                    $crate::model::cpu::isa::Isa::Avx2 => return unsafe { avx2($($arg),*) },
                    $crate::model::cpu::isa::Isa::Portable => {}
                }
            }
            // SAFETY: the caller's promise, forwarded.
            unsafe { $body($($arg),*) }
        }
    };
}
pub(crate) use simd_versions;
