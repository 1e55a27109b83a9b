//! Buffers the CPU network's parts share: scratch vectors that only grow, and a raw pointer
//! that hands disjoint parts of one output to rayon tasks.

/// `v[..len]`, growing `v` when it is shorter. Contents are whatever was there: callers overwrite.
pub fn grow(v: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if v.len() < len {
        v.resize(len, 0.0);
    }
    &mut v[..len]
}

/// A pointer into a buffer whose disjoint regions rayon tasks write at the same time.
pub struct SendPtr(pub *mut f32);
// SAFETY: used only to hand disjoint regions of one buffer to rayon tasks (see the GEMM loop).
unsafe impl Sync for SendPtr {}
unsafe impl Send for SendPtr {}
