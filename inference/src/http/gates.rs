//! The limits every request passes through before its bytes are held or decoded: a memory
//! budget and deadline for bodies being received, and decode slots with a memory budget. Shared
//! by the handlers through `AppState`; `request` takes from them.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

/// What bodies being received may hold: a budget of bytes each request is charged before its
/// body is read (its `Content-Length`, or `MAX_BODY_BYTES` when it does not say), and a deadline
/// for the whole body. A client that trickles its body holds no queue place and no decode, and
/// is cut off at the deadline; when the budget is spent, new uploads get 503 at once.
pub struct BodyGate {
    pub budget: Arc<Semaphore>,
    pub budget_kib: u32,
    pub timeout: Duration,
}

impl BodyGate {
    pub fn new(memory_bytes: u64, timeout: Duration) -> Self {
        let budget_kib = (memory_bytes >> 10).min(Semaphore::MAX_PERMITS as u64) as u32;
        Self {
            budget: Arc::new(Semaphore::new(budget_kib as usize)),
            budget_kib,
            timeout,
        }
    }
}

/// What decoding may use at once: a slot per decode thread (sized to the cores), and a memory
/// budget each image is charged from its header ([`preprocess::Probe::decode_bytes`]) before
/// anything is allocated for it. Both are fair (first come, first served).
pub struct DecodeGate {
    pub slots: Semaphore,
    pub memory: Semaphore,
    /// The budget in KiB (the semaphore's unit).
    pub memory_kib: u32,
}

impl DecodeGate {
    pub fn new(threads: usize, memory_bytes: u64) -> Self {
        let memory_kib = (memory_bytes >> 10).min(Semaphore::MAX_PERMITS as u64) as u32;
        Self {
            slots: Semaphore::new(threads.max(1)),
            memory: Semaphore::new(memory_kib as usize),
            memory_kib,
        }
    }
}
