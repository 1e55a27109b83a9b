//! Dynamic batching in the style of text-embeddings-inference: requests wait in a bounded queue;
//! the model, on its own thread, takes everything waiting (up to `max_batch` images) each time it
//! frees up. No timer: at low load a batch is one image with no added latency; under load batches
//! grow by themselves. A full queue is refused at once (the HTTP layer answers 503 + Retry-After).
//!
//! On the CPU, preprocessing and the forward pass take turns on the cores ([`CpuTurns`]).

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::metrics::Metrics;
use crate::model::weights::NUM_CLASSES;
use crate::model::{INPUT_LEN, Model};

/// Anything that maps a flat (n, 3, 224, 224) batch to flat (n, classes) logits.
pub trait BatchModel: Send + 'static {
    fn forward(&mut self, input: Vec<f32>, n: usize) -> anyhow::Result<Vec<f32>>;
    /// The batch as its requests brought it, one piece each, in order: a model that copies the
    /// input into buffers of its own anyway (the GPU's pinned memory) skips joining them first.
    fn forward_parts(&mut self, mut parts: Vec<Vec<f32>>, n: usize) -> anyhow::Result<Vec<f32>> {
        let input = if parts.len() == 1 {
            parts.pop().unwrap_or_default()
        } else {
            parts.concat()
        };
        self.forward(input, n)
    }
    fn classes(&self) -> usize;
}

/// The server's network, batch in, logits out.
impl BatchModel for Model {
    fn forward(&mut self, input: Vec<f32>, n: usize) -> anyhow::Result<Vec<f32>> {
        Ok(self.forward_flat(input, n)?)
    }
    fn classes(&self) -> usize {
        NUM_CLASSES
    }
}

/// One lane of the cuDNN network: a model thread of its own.
#[cfg(feature = "cuda")]
impl BatchModel for crate::model::gpu::cudnn::Lane {
    fn forward(&mut self, input: Vec<f32>, n: usize) -> anyhow::Result<Vec<f32>> {
        self.forward_parts(&[&input], n)
    }
    fn forward_parts(&mut self, parts: Vec<Vec<f32>>, n: usize) -> anyhow::Result<Vec<f32>> {
        let parts: Vec<&[f32]> = parts.iter().map(Vec::as_slice).collect();
        crate::model::gpu::cudnn::Lane::forward_parts(self, &parts, n)
    }
    fn classes(&self) -> usize {
        NUM_CLASSES
    }
}

#[derive(Clone, Copy, Debug)]
pub struct EngineConfig {
    pub max_batch: usize,
    pub max_queue: usize,
    /// A request still queued after this long is answered 503 instead of being run late.
    pub queue_timeout: Duration,
    /// The model computes on the same cores as preprocessing (the CPU device): see [`CpuTurns`].
    pub shares_cpu: bool,
    /// With several model threads (GPU lanes): while another thread's batch runs, a thread
    /// that has a batch short of `max_batch` waits up to this long for more requests before
    /// starting it. The GPU is busy anyway, and a fuller batch costs little more than a small
    /// one; a thread that finds the GPU idle starts at once.
    pub lane_wait: Duration,
}

/// Preprocessing and the CPU forward pass take turns on the cores.
///
/// The forward pass splits every layer over all cores and waits for the slowest part. A decode
/// running beside it takes a core away for milliseconds at a time, the other core waits at the
/// layer's end, and both lose: measured at 8 concurrent requests, a batch's images took 48 ms
/// each in the server against 37 ms in the forward-only benchmark.
///
/// The policy, written out rather than left to a lock's fairness: each image's decode holds a
/// turn of its own; a forward pass that wants the cores first stops new decodes from starting,
/// then waits for the decodes already running, at most [`FORWARD_WAIT`] (a huge image's decode
/// can take seconds: past the bound the pass runs beside it rather than stall every queued
/// request); decodes that were held back start when the pass ends. Those decodes' requests join
/// the next batch.
///
/// Before taking its turn a batch that is not yet full also waits, up to [`GATHER`], for
/// requests already admitted but not yet queued (being decoded; a body still arriving is not
/// admitted yet, so a slow uploader cannot hold a batch back), and,
/// while fewer images are ready than the last batch held, for the clients of that batch to come
/// back. Their decode has to run before the next forward pass anyway; starting without them
/// cost a whole extra pass: at 8 concurrent requests batches alternated 1, 7, 1, 7. At one
/// request at a time the last batch held one image, so nothing waits; under overload the queue
/// holds a full batch, so nothing waits either; after the model thread sat idle for longer than
/// [`IDLE_RESET`] the last batch is forgotten (the burst is over).
#[derive(Default)]
pub struct CpuTurns {
    state: Mutex<TurnState>,
    changed: Condvar,
}

#[derive(Default)]
struct TurnState {
    decoding: usize,
    /// A forward pass is waiting for the cores or running: no new decode starts.
    forward: bool,
}

/// The longest a forward pass waits for decodes already running to finish.
pub const FORWARD_WAIT: Duration = Duration::from_millis(250);

/// The longest a CPU batch waits for admitted requests to reach the queue.
const GATHER: Duration = Duration::from_millis(20);
/// An idle spell after which the last batch's size no longer predicts the next one. Under
/// steady load the model thread waits for the next request only as long as a client round trip
/// and a decode (tens of ms); a forward pass of a full batch takes ~300 ms.
const IDLE_RESET: Duration = Duration::from_millis(100);

impl CpuTurns {
    fn lock(&self) -> std::sync::MutexGuard<'_, TurnState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Held while one image is decoded and resized; waits while a forward pass has the cores.
    pub fn preprocessing(&self) -> Turn<'_> {
        let mut s = self.lock();
        while s.forward {
            s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.decoding += 1;
        Turn {
            turns: self,
            forward: false,
        }
    }

    /// Held while a forward pass runs (see the type's policy).
    fn forward(&self) -> Turn<'_> {
        let mut s = self.lock();
        s.forward = true;
        let deadline = Instant::now() + FORWARD_WAIT;
        while s.decoding > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            s = self
                .changed
                .wait_timeout(s, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        Turn {
            turns: self,
            forward: true,
        }
    }
}

/// A decode's or a forward pass's turn; ends when dropped.
pub struct Turn<'a> {
    turns: &'a CpuTurns,
    forward: bool,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut s = self.turns.lock();
        if self.forward {
            s.forward = false;
        } else {
            s.decoding -= 1;
        }
        drop(s);
        self.turns.changed.notify_all();
    }
}

/// What liveness needs to know about the model thread: whether it still runs, and how many
/// forward passes in a row have failed. A server whose model thread died, or whose every pass
/// fails (a wedged GPU, a corrupted buffer), should be restarted, not left answering 500s.
#[derive(Default)]
pub struct ModelHealth {
    stopped: AtomicBool,
    failures_in_a_row: AtomicU32,
}

impl ModelHealth {
    /// `Err(why)` when the thread is gone or the last `max_failures` passes all failed.
    pub fn check(&self, max_failures: u32) -> Result<(), String> {
        if self.stopped.load(Ordering::Acquire) {
            return Err("the model thread has stopped".into());
        }
        let failures = self.failures_in_a_row.load(Ordering::Acquire);
        if failures >= max_failures {
            return Err(format!("the last {failures} forward passes failed"));
        }
        Ok(())
    }

    fn passed(&self, ok: bool) {
        if ok {
            self.failures_in_a_row.store(0, Ordering::Release);
        } else {
            self.failures_in_a_row.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// Marks the model thread stopped however it ends (return or panic).
struct StopGuard(Arc<ModelHealth>);

impl Drop for StopGuard {
    fn drop(&mut self) {
        self.0.stopped.store(true, Ordering::Release);
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EngineError {
    #[error("the server is at capacity ({0} images admitted); retry shortly")]
    QueueFull(usize),
    #[error("{n} images in one request, more than MAX_QUEUE={max} can ever hold")]
    TooManyImages { n: usize, max: usize },
    #[error("the request waited longer than {0:?} for the model")]
    Expired(Duration),
    #[error("inference failed: {0}")]
    Model(String),
    #[error("the model is shutting down")]
    Stopped,
}

pub struct Output {
    /// (n, classes) logits of this request's images.
    pub logits: Vec<f32>,
    pub queue_seconds: f64,
    pub model_seconds: f64,
    pub batch_size: usize,
}

struct Job {
    /// Released when the model thread takes the job off the queue.
    permit: Option<Permit>,
    input: Vec<f32>,
    n: usize,
    enqueued: Instant,
    reply: oneshot::Sender<Result<Output, EngineError>>,
}

/// A place in the queue, taken before the request body is read and decoded: a full server
/// refuses new work before spending CPU on it, so overload does not slow the admitted requests.
/// Released when the model thread takes the job (or when the request fails before that).
pub struct Permit {
    /// Images this permit holds places for.
    n: usize,
    pending: Arc<AtomicUsize>,
    /// `ml_inference_queue_depth`: raised when the permit is made, lowered when it drops, so it
    /// counts exactly the admitted requests and can never read below zero.
    depth: prometheus::IntGauge,
}

impl Permit {
    /// Moves `k` of this permit's places to a new permit (one per sub-batch of a request).
    fn split_off(&mut self, k: usize) -> Permit {
        assert!(k <= self.n);
        self.n -= k;
        Permit {
            n: k,
            pending: self.pending.clone(),
            depth: self.depth.clone(),
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.pending.fetch_sub(self.n, Ordering::AcqRel);
        self.depth.sub(self.n as i64);
    }
}

pub struct Engine {
    tx: SyncSender<Job>,
    /// Images admitted and not yet taken by the model thread (≤ `max_queue`). A request is
    /// admitted once its body has arrived, so these are decoding or queued.
    pending: Arc<AtomicUsize>,
    /// Of those, the images in the queue.
    queued: Arc<AtomicUsize>,
    cfg: EngineConfig,
    metrics: Arc<Metrics>,
    classes: usize,
    turns: Option<Arc<CpuTurns>>,
    health: Arc<ModelHealth>,
}

impl Engine {
    pub fn start(model: Box<dyn BatchModel>, cfg: EngineConfig, metrics: Arc<Metrics>) -> Self {
        Self::start_lanes(vec![model], cfg, metrics)
    }

    /// One model thread per model, all taking batches from the one queue (GPU lanes: while one
    /// thread copies and answers, another's batch runs).
    pub fn start_lanes(
        models: Vec<Box<dyn BatchModel>>,
        cfg: EngineConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        assert!(!models.is_empty(), "an engine needs a model");
        let (tx, rx) = sync_channel(cfg.max_queue);
        let rx = Arc::new(Mutex::new(rx));
        let classes = models[0].classes();
        let m = metrics.clone();
        let turns = cfg.shares_cpu.then(Arc::<CpuTurns>::default);
        let (pending, queued) = (Arc::<AtomicUsize>::default(), Arc::<AtomicUsize>::default());
        let counts = Counts {
            pending: pending.clone(),
            queued: queued.clone(),
        };
        let health = Arc::<ModelHealth>::default();
        let lanes = models.len();
        let busy = Arc::<AtomicUsize>::default();
        for (i, model) in models.into_iter().enumerate() {
            let guard = StopGuard(health.clone());
            let (t, m, rx) = (turns.clone(), m.clone(), rx.clone());
            let counts = Lanes {
                counts: counts.clone(),
                busy: busy.clone(),
            };
            let name = if lanes == 1 {
                "model".to_string()
            } else {
                format!("model-{i}")
            };
            std::thread::Builder::new()
                .name(name)
                .spawn(move || {
                    let guard = guard; // dropped when the thread ends, by return or by panic
                    run(model, &rx, cfg, m, (t, counts), &guard.0)
                })
                .expect("spawn the model thread");
        }
        Self {
            tx,
            pending,
            queued,
            cfg,
            metrics,
            classes,
            turns,
            health,
        }
    }

    /// The model thread's health, for liveness.
    pub fn health(&self) -> &ModelHealth {
        &self.health
    }

    /// Where preprocessing must take its turn on the cores (`None`: the model is not on the CPU).
    pub fn cpu_turns(&self) -> Option<Arc<CpuTurns>> {
        self.turns.clone()
    }

    /// Takes places for `n` images, or refuses at once when that would pass `max_queue` images
    /// admitted and not yet in a forward pass. Places count images, not requests: a request of
    /// 32 images weighs 32 times one of a single image.
    pub fn admit(&self, n: usize) -> Result<Permit, EngineError> {
        let max = self.cfg.max_queue;
        if n > max {
            return Err(EngineError::TooManyImages { n, max });
        }
        let taken = self
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                (p + n <= max).then_some(p + n)
            });
        if taken.is_err() {
            self.metrics.rejected.inc();
            return Err(EngineError::QueueFull(max));
        }
        self.metrics.queue_depth.add(n as i64);
        Ok(Permit {
            n,
            pending: self.pending.clone(),
            depth: self.metrics.queue_depth.clone(),
        })
    }

    /// Whether `n` more images would be admitted now (takes nothing): lets a request be refused
    /// before its body is read.
    pub fn has_room(&self, n: usize) -> Result<(), EngineError> {
        let max = self.cfg.max_queue;
        if self.pending.load(Ordering::Acquire) + n > max {
            self.metrics.rejected.inc();
            return Err(EngineError::QueueFull(max));
        }
        Ok(())
    }

    pub fn classes(&self) -> usize {
        self.classes
    }

    pub fn max_batch(&self) -> usize {
        self.cfg.max_batch
    }

    /// Queues `n` preprocessed images (flat, n × 3 × 224 × 224) and waits for their logits.
    pub async fn infer(&self, input: Vec<f32>, n: usize) -> Result<Output, EngineError> {
        let permit = self.admit(n)?;
        self.infer_admitted(permit, input, n).await
    }

    /// [`Engine::infer`] for a request that already holds its places (see [`Engine::admit`]).
    /// More than `max_batch` images go as several jobs of at most `max_batch`, so no forward
    /// pass (and no buffer it grows) is ever larger than `MAX_BATCH_SIZE`.
    pub async fn infer_admitted(
        &self,
        mut permit: Permit,
        mut input: Vec<f32>,
        n: usize,
    ) -> Result<Output, EngineError> {
        assert_eq!(input.len(), n * INPUT_LEN);
        let max = self.cfg.max_batch;
        if n <= max {
            return self.infer_one(permit, input, n).await;
        }
        let mut parts = Vec::new();
        let mut first = 0;
        while first < n {
            let k = max.min(n - first);
            let rest = input.split_off(k * INPUT_LEN);
            let part = std::mem::replace(&mut input, rest);
            parts.push(self.infer_one(permit.split_off(k), part, k));
            first += k;
        }
        let mut out = Output {
            logits: Vec::with_capacity(n * self.classes),
            queue_seconds: 0.0,
            model_seconds: 0.0,
            batch_size: 0,
        };
        for part in futures_util::future::join_all(parts).await {
            let part = part?;
            out.logits.extend_from_slice(&part.logits);
            out.queue_seconds = out.queue_seconds.max(part.queue_seconds);
            out.model_seconds += part.model_seconds;
            out.batch_size = out.batch_size.max(part.batch_size);
        }
        Ok(out)
    }

    /// One job of at most `max_batch` images.
    async fn infer_one(
        &self,
        permit: Permit,
        input: Vec<f32>,
        n: usize,
    ) -> Result<Output, EngineError> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            permit: Some(permit),
            input,
            n,
            enqueued: Instant::now(),
            reply,
        };
        // Counted first: the model thread may take the job as soon as it is sent.
        self.queued.fetch_add(n, Ordering::AcqRel);
        match self.tx.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.queued.fetch_sub(n, Ordering::AcqRel);
                self.metrics.rejected.inc();
                return Err(EngineError::QueueFull(self.cfg.max_queue));
            }
            Err(TrySendError::Disconnected(_)) => {
                self.queued.fetch_sub(n, Ordering::AcqRel);
                return Err(EngineError::Stopped);
            }
        }
        rx.await.unwrap_or(Err(EngineError::Stopped))
    }
}

/// What a model thread shares with the others: the request counts, and how many batches run.
struct Lanes {
    counts: Counts,
    busy: Arc<AtomicUsize>,
}

/// The engine's request counts, as the model thread sees them.
#[derive(Clone)]
struct Counts {
    pending: Arc<AtomicUsize>,
    queued: Arc<AtomicUsize>,
}

impl Counts {
    fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// Admitted images not yet in the queue: being decoded.
    fn preparing(&self) -> usize {
        let queued = self.queued.load(Ordering::Acquire);
        self.pending.load(Ordering::Acquire).saturating_sub(queued)
    }

    /// The model thread took `job` off the queue: its place is free again.
    fn taken(&self, job: &mut Job) {
        self.queued.fetch_sub(job.n, Ordering::AcqRel);
        job.permit = None;
    }
}

/// A model thread: collect a batch, run it, fan the logits back out. With several threads the
/// queue's lock is held while a batch is collected, so each batch is whole.
fn run(
    mut model: Box<dyn BatchModel>,
    rx: &Mutex<Receiver<Job>>,
    cfg: EngineConfig,
    metrics: Arc<Metrics>,
    (turns, lanes): (Option<Arc<CpuTurns>>, Lanes),
    health: &ModelHealth,
) {
    let counts = &lanes.counts;
    let mut carry: Option<Job> = None;
    let mut last_batch = 0;
    loop {
        let rx = rx.lock().unwrap_or_else(|e| e.into_inner());
        let first = match carry.take() {
            Some(job) => job,
            None => {
                let idle = Instant::now();
                let job = match rx.recv() {
                    Ok(mut job) => {
                        counts.taken(&mut job);
                        job
                    }
                    Err(_) => return, // every sender dropped: the server is gone
                };
                // Idle for a while: no clients are about to come back.
                if idle.elapsed() > IDLE_RESET {
                    last_batch = 0;
                }
                job
            }
        };
        // On the CPU: let the requests already admitted reach the queue, then wait for the
        // decodes in progress (see `CpuTurns`); all of them join this batch.
        let _turn = turns.as_deref().map(|turns| {
            let deadline = Instant::now() + GATHER;
            // Images ready.
            let ready = || first.n + counts.queued();
            while ready() < cfg.max_batch
                && (counts.preparing() > 0 || ready() < last_batch)
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_micros(200));
            }
            turns.forward()
        });
        // Another thread's batch is running: gather a fuller batch while it does.
        if !cfg.lane_wait.is_zero() && lanes.busy.load(Ordering::Acquire) > 0 {
            let deadline = Instant::now() + cfg.lane_wait;
            while first.n + counts.queued() < cfg.max_batch
                && lanes.busy.load(Ordering::Acquire) > 0
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_micros(100));
            }
        }
        let mut jobs = Vec::new();
        let mut images = 0;
        for job in std::iter::once(first).chain(std::iter::from_fn(|| match rx.try_recv() {
            Ok(mut job) => {
                counts.taken(&mut job);
                Some(job)
            }
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => None,
        })) {
            if job.reply.is_closed() {
                continue; // the client went away: don't spend the model on it
            }
            let waited = job.enqueued.elapsed();
            if waited > cfg.queue_timeout {
                let _ = job.reply.send(Err(EngineError::Expired(cfg.queue_timeout)));
                continue;
            }
            if images > 0 && images + job.n > cfg.max_batch {
                carry = Some(job);
                break;
            }
            images += job.n;
            jobs.push(job);
            if images >= cfg.max_batch {
                break;
            }
        }
        drop(rx);
        if jobs.is_empty() {
            continue;
        }
        last_batch = images;
        lanes.busy.fetch_add(1, Ordering::AcqRel);
        run_batch(model.as_mut(), jobs, images, &metrics, health);
        lanes.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Runs one batch and answers its requests. Health is updated first, so a client that sees its
/// answer sees the health that answer implies.
fn run_batch(
    model: &mut dyn BatchModel,
    mut jobs: Vec<Job>,
    images: usize,
    metrics: &Metrics,
    health: &ModelHealth,
) {
    let started = Instant::now();
    let parts: Vec<Vec<f32>> = jobs
        .iter_mut()
        .map(|j| std::mem::take(&mut j.input))
        .collect();
    // A panic inside the model must not take the thread (and so the server) down.
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| model.forward_parts(parts, images)))
        .unwrap_or_else(|_| Err(anyhow::anyhow!("the model panicked")));
    let model_seconds = started.elapsed().as_secs_f64();
    metrics.model_seconds.observe(model_seconds);
    metrics.batch_size.observe(images as f64);
    let classes = model.classes();
    match result {
        Ok(logits) if logits.len() == images * classes => {
            health.passed(true);
            let mut offset = 0;
            for job in jobs {
                let len = job.n * classes;
                let queue_seconds = started.duration_since(job.enqueued).as_secs_f64();
                metrics.queue_seconds.observe(queue_seconds);
                let out = Output {
                    logits: logits[offset..offset + len].to_vec(),
                    queue_seconds,
                    model_seconds,
                    batch_size: images,
                };
                offset += len;
                let _ = job.reply.send(Ok(out));
            }
        }
        Ok(logits) => {
            health.passed(false);
            let message = format!("model returned {} values for {images} images", logits.len());
            fail_all(jobs, message);
        }
        Err(e) => {
            health.passed(false);
            fail_all(jobs, format!("{e:#}"));
        }
    }
}

fn fail_all(jobs: Vec<Job>, message: String) {
    tracing::error!(%message, "forward pass failed");
    for job in jobs {
        let _ = job.reply.send(Err(EngineError::Model(message.clone())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A fake model that records batch sizes; logits = image index so outputs can be matched up.
    struct Recorder {
        batches: Arc<Mutex<Vec<usize>>>,
        delay: Duration,
    }

    impl BatchModel for Recorder {
        fn forward(&mut self, input: Vec<f32>, n: usize) -> anyhow::Result<Vec<f32>> {
            self.batches.lock().unwrap().push(n);
            std::thread::sleep(self.delay);
            Ok((0..n).flat_map(|i| [input[i * INPUT_LEN], 0.0]).collect())
        }
        fn classes(&self) -> usize {
            2
        }
    }

    /// An engine over a `Recorder` that takes `delay_ms` per batch; returns it and the batch log.
    fn recording_engine(
        delay_ms: u64,
        max_batch: usize,
        max_queue: usize,
    ) -> (Arc<Engine>, Arc<Mutex<Vec<usize>>>) {
        let batches = Arc::new(Mutex::new(Vec::new()));
        let model = Recorder {
            batches: batches.clone(),
            delay: Duration::from_millis(delay_ms),
        };
        let cfg = EngineConfig {
            max_batch,
            max_queue,
            queue_timeout: Duration::from_secs(10),
            shares_cpu: true,
            lane_wait: Duration::ZERO,
        };
        let engine = Engine::start(Box::new(model), cfg, Arc::new(Metrics::new()));
        (Arc::new(engine), batches)
    }

    fn image(tag: f32) -> Vec<f32> {
        vec![tag; INPUT_LEN]
    }

    /// Sends `n` one-image requests tagged 0..n at once; each must get its own answer back.
    async fn infer_tagged(engine: &Arc<Engine>, n: usize) {
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let e = engine.clone();
                tokio::spawn(async move { (i, e.infer(image(i as f32), 1).await.unwrap()) })
            })
            .collect();
        for t in tasks {
            let (i, out) = t.await.unwrap();
            assert_eq!(
                out.logits,
                vec![i as f32, 0.0],
                "request {i} got another request's answer"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn batches_what_waits_and_routes_each_answer_back() {
        let (engine, batches) = recording_engine(100, 4, 16);
        infer_tagged(&engine, 9).await;
        let b = batches.lock().unwrap().clone();
        assert_eq!(b.iter().sum::<usize>(), 9);
        assert!(b.iter().all(|&n| n <= 4), "batch over max_batch: {b:?}");
        assert!(b.len() < 9, "nothing was batched: {b:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn lanes_share_the_queue_and_each_answer_reaches_its_request() {
        let batches = Arc::new(Mutex::new(Vec::new()));
        let lane = || -> Box<dyn BatchModel> {
            Box::new(Recorder {
                batches: batches.clone(),
                delay: Duration::from_millis(100),
            })
        };
        let cfg = EngineConfig {
            max_batch: 4,
            max_queue: 64,
            queue_timeout: Duration::from_secs(10),
            shares_cpu: false,
            lane_wait: Duration::from_millis(5),
        };
        let engine = Arc::new(Engine::start_lanes(
            vec![lane(), lane()],
            cfg,
            Arc::new(Metrics::new()),
        ));
        let started = Instant::now();
        infer_tagged(&engine, 16).await;
        let b = batches.lock().unwrap().clone();
        assert_eq!(b.iter().sum::<usize>(), 16);
        assert!(b.iter().all(|&n| n <= 4), "batch over max_batch: {b:?}");
        // 16 images in batches of at most 4 at 100 ms each: one thread alone needs >= 400 ms,
        // two side by side ~200 ms.
        assert!(
            started.elapsed() < Duration::from_millis(380),
            "the two threads did not run batches side by side: {:?} for {b:?}",
            started.elapsed()
        );
    }

    /// Fails the forward passes whose first value is negative; panics in `classes` once told to.
    struct Flaky(Arc<AtomicBool>);

    impl BatchModel for Flaky {
        fn forward(&mut self, input: Vec<f32>, n: usize) -> anyhow::Result<Vec<f32>> {
            anyhow::ensure!(input[0] >= 0.0, "bad pass");
            Ok(vec![0.0; n * 2])
        }
        fn classes(&self) -> usize {
            assert!(!self.0.load(Ordering::Acquire), "the model thread dies");
            2
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn health_fails_after_failed_passes_in_a_row_and_when_the_thread_dies() {
        let die = Arc::new(AtomicBool::new(false));
        let cfg = EngineConfig {
            max_batch: 1,
            max_queue: 4,
            queue_timeout: Duration::from_secs(10),
            shares_cpu: false,
            lane_wait: Duration::ZERO,
        };
        let engine = Engine::start(Box::new(Flaky(die.clone())), cfg, Arc::new(Metrics::new()));
        assert_eq!(engine.health().check(3), Ok(()));
        for _ in 0..2 {
            assert!(engine.infer(image(-1.0), 1).await.is_err());
        }
        assert_eq!(
            engine.health().check(3),
            Ok(()),
            "two failures are not three"
        );
        engine.infer(image(1.0), 1).await.unwrap();
        for _ in 0..3 {
            assert!(engine.infer(image(-1.0), 1).await.is_err());
        }
        let err = engine.health().check(3).unwrap_err();
        assert!(err.contains("3 forward passes failed"), "{err}");
        engine.infer(image(1.0), 1).await.unwrap();
        assert_eq!(
            engine.health().check(3),
            Ok(()),
            "a good pass resets the count"
        );
        // A panic outside the forward pass ends the thread: liveness must say so.
        die.store(true, Ordering::Release);
        assert!(engine.infer(image(1.0), 1).await.is_err());
        let deadline = Instant::now() + Duration::from_secs(5);
        while engine.health().check(3).is_ok() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            engine.health().check(3),
            Err("the model thread has stopped".into())
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn full_queue_is_refused_not_queued() {
        let (engine, _) = recording_engine(300, 1, 1);
        let tasks: Vec<_> = (0..6)
            .map(|i| {
                let e = engine.clone();
                tokio::spawn(async move { e.infer(image(i as f32), 1).await })
            })
            .collect();
        let mut refused = 0;
        for t in tasks {
            if let Err(e) = t.await.unwrap() {
                assert_eq!(e, EngineError::QueueFull(1));
                refused += 1;
            }
        }
        assert!(
            refused >= 3,
            "only {refused} of 6 refused with one running and one queued"
        );
    }

    /// The turn-taking policy itself: a waiting pass holds back new decodes, waits for running
    /// ones at most FORWARD_WAIT, and the held-back decodes start when it ends.
    #[test]
    fn turns_follow_the_written_policy() {
        let turns = Arc::new(CpuTurns::default());
        let stuck = turns.preprocessing(); // a decode that outlasts the bound
        let started = Instant::now();
        let (tx, rx) = std::sync::mpsc::channel();
        let t = turns.clone();
        let pass = std::thread::spawn(move || {
            let turn = t.forward();
            tx.send(started.elapsed()).unwrap();
            std::thread::sleep(Duration::from_millis(200));
            drop(turn);
        });
        std::thread::sleep(Duration::from_millis(50));
        // The pass is waiting: a new decode must wait for it to end.
        let t = turns.clone();
        let late = std::thread::spawn(move || {
            let _turn = t.preprocessing();
            started.elapsed()
        });
        let pass_started = rx.recv().unwrap();
        assert!(
            pass_started >= FORWARD_WAIT && pass_started < FORWARD_WAIT * 3,
            "the pass waited {pass_started:?} for a stuck decode"
        );
        let late_started = late.join().unwrap();
        assert!(
            late_started >= pass_started + Duration::from_millis(150),
            "a decode started during the pass: {late_started:?} vs {pass_started:?}"
        );
        pass.join().unwrap();
        drop(stuck);
    }

    /// A batch waits for the preprocessing in progress, and takes the requests it was preparing:
    /// here the second request is queued while a decode still holds its turn, so both run in
    /// one batch once the decode ends.
    // The read turn stands for a decode running on another thread; holding it across the
    // test's awaits is the point.
    #[allow(clippy::await_holding_lock)]
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn forward_waits_for_preprocessing_and_batches_it() {
        let (engine, batches) = recording_engine(10, 8, 8);
        let turns = engine.cpu_turns().expect("a CPU engine takes turns");
        let decoding = turns.preprocessing();
        let e = engine.clone();
        let first = tokio::spawn(async move { e.infer(image(1.0), 1).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(batches.lock().unwrap().is_empty(), "ran beside a decode");
        let e = engine.clone();
        let second = tokio::spawn(async move { e.infer(image(2.0), 1).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(decoding);
        assert_eq!(first.await.unwrap().unwrap().logits, vec![1.0, 0.0]);
        assert_eq!(second.await.unwrap().unwrap().logits, vec![2.0, 0.0]);
        assert_eq!(*batches.lock().unwrap(), vec![2]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn admission_is_bounded_and_places_come_back() {
        let (engine, _) = recording_engine(10, 1, 2);
        let a = engine.admit(1).unwrap();
        let b = engine.admit(1).unwrap();
        // Two images being decoded fill the queue: the third is refused at once.
        assert!(matches!(engine.admit(1), Err(EngineError::QueueFull(2))));
        assert!(engine.has_room(1).is_err());
        drop(a); // that request failed (say, a bad image): its place is free again
        assert!(engine.has_room(1).is_ok());
        let c = engine.admit(1).unwrap();
        // Taken by the model thread, a job gives its place back before it is answered.
        engine.infer_admitted(b, image(1.0), 1).await.unwrap();
        engine.infer_admitted(c, image(2.0), 1).await.unwrap();
        // Places count images: a request of two takes both, one of three can never fit.
        let two = engine.admit(2).unwrap();
        assert!(matches!(engine.admit(1), Err(EngineError::QueueFull(2))));
        drop(two);
        assert!(matches!(
            engine.admit(3),
            Err(EngineError::TooManyImages { n: 3, max: 2 })
        ));
    }

    /// A request of more images than MAX_BATCH_SIZE runs as several passes of at most that many,
    /// and its answers come back in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_batch_over_max_batch_is_split() {
        let (engine, batches) = recording_engine(1, 3, 16);
        let input: Vec<f32> = (0..7).flat_map(|i| image(i as f32)).collect();
        let out = engine.infer(input, 7).await.unwrap();
        let firsts: Vec<f32> = out.logits.chunks(2).map(|c| c[0]).collect();
        assert_eq!(firsts, (0..7).map(|i| i as f32).collect::<Vec<_>>());
        let b = batches.lock().unwrap().clone();
        assert!(
            b.iter().all(|&n| n <= 3),
            "a pass over MAX_BATCH_SIZE: {b:?}"
        );
        assert_eq!(b.iter().sum::<usize>(), 7);
        assert_eq!(engine.metrics.queue_depth.get(), 0);
    }
}
