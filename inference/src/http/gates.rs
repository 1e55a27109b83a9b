//! The limits every request passes through before its bytes are held or decoded: a memory
//! budget and deadline for bodies being received, and decode slots with a memory budget. Shared
//! by the handlers through `AppState`; `request` takes from them.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

/// A byte budget, counted in KiB so that gigabytes fit a semaphore's permits.
pub struct MemoryBudget {
    pub semaphore: Arc<Semaphore>,
    pub total_kib: u32,
}

impl MemoryBudget {
    pub fn new(bytes: u64) -> Self {
        let max = u32::try_from(Semaphore::MAX_PERMITS).unwrap_or(u32::MAX);
        let total_kib = Self::kib(bytes).min(max);
        Self {
            semaphore: Arc::new(Semaphore::new(total_kib as usize)),
            total_kib,
        }
    }

    /// `bytes` in the budget's unit, rounded up (saturating: anything that large is over it).
    pub fn kib(bytes: u64) -> u32 {
        bytes.div_ceil(1024).try_into().unwrap_or(u32::MAX)
    }
}

/// What bodies being received may hold: a budget of bytes each request is charged before its
/// body is read (its `Content-Length`, or `MAX_BODY_BYTES` when it does not say), and a deadline
/// for the whole body. A client that trickles its body holds no queue place and no decode, and
/// is cut off at the deadline; when the budget is spent, new uploads get 503 at once.
pub struct BodyGate {
    pub budget: MemoryBudget,
    pub timeout: Duration,
}

impl BodyGate {
    pub fn new(memory_bytes: u64, timeout: Duration) -> Self {
        Self {
            budget: MemoryBudget::new(memory_bytes),
            timeout,
        }
    }
}

/// What decoding may use at once: a slot per decode thread (sized to the cores), and a memory
/// budget each image is charged from its header ([`preprocess::Probe::decode_bytes`]) before
/// anything is allocated for it. Both are fair (first come, first served).
pub struct DecodeGate {
    pub slots: Semaphore,
    pub memory: MemoryBudget,
}

impl DecodeGate {
    pub fn new(threads: usize, memory_bytes: u64) -> Self {
        Self {
            slots: Semaphore::new(threads.max(1)),
            memory: MemoryBudget::new(memory_bytes),
        }
    }
}
