//! Process wiring: the listener, the model loaded and warmed up in the background, the routes,
//! and graceful shutdown.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use actix_web::dev::Service;
use actix_web::{App, HttpServer, web};
use candle_core::Device;

use super::state::{AppState, Phase, WeightsInfo};
use super::{ops, peer, predict, v2};
use crate::config::{DctScaling, GpuDtype, GpuEngine, ServeArgs, num_cpus};
use crate::engine::{BatchModel, Engine, EngineConfig};
use crate::model::cpu::isa::Isa;
use crate::model::device::{device_name, select_device};
use crate::model::{INPUT_LEN, Model, weights};

/// Loads and checks the weights, runs one warm-up forward, then opens the engine (→ ready).
fn load_model(state: &AppState, device: Device) -> anyhow::Result<()> {
    let started = Instant::now();
    let args = &state.args;
    let gpu = !matches!(device, Device::Cpu);
    let max_batch = args.max_batch(gpu);
    // The cuDNN engine folds and packs the weights on the host itself.
    let load_on = if use_cudnn(args, &device) {
        Device::Cpu
    } else {
        device.clone()
    };
    let w = weights::load(&args.model_path, &load_on)?;
    if let Some(seed) = &w.random_seed {
        tracing::warn!(
            seed = %seed,
            path = %args.model_path.display(),
            "serving RANDOM weights written by `inference-server generate-weights`: predictions are meaningless; see the README for real ResNet50 weights"
        );
    }
    let gpu_dtype = match args.gpu_dtype {
        GpuDtype::F16 => candle_core::DType::F16,
        GpuDtype::F32 => candle_core::DType::F32,
    };
    let mut model = build_model(args, &device, &w, gpu_dtype, max_batch)?;
    tracing::info!(implementation = model.implementation(), "model built");
    model
        .forward(vec![0.0; INPUT_LEN], 1)
        .map_err(|e| anyhow::anyhow!("warm-up forward pass failed: {e:#}"))?;
    let _ = state.weights_info.set(WeightsInfo {
        sha256: w.sha256,
        random_seed: w.random_seed,
        implementation: model.implementation(),
        isa: matches!(model, Model::Cpu(_)).then(|| Isa::detect().name()),
    });
    let info = state.weights_info.get().expect("set just above");
    state.metrics.build_info(
        &device_name(&device),
        info.implementation,
        info.isa.unwrap_or(""),
    );
    let cfg = EngineConfig {
        max_batch,
        max_queue: args.max_queue(gpu),
        queue_timeout: Duration::from_secs_f64(args.queue_timeout_seconds),
        shares_cpu: !gpu,
        lane_wait: if gpu {
            Duration::from_secs_f64(args.gpu_batch_wait_ms / 1e3)
        } else {
            Duration::ZERO
        },
    };
    let models = model_threads(model, args.gpu_lanes as usize)?;
    tracing::info!(
        threads = models.len(),
        max_batch,
        "starting the model threads"
    );
    let _ = state
        .engine
        .set(Engine::start_lanes(models, cfg, state.metrics.clone()));
    let secs = started.elapsed().as_secs_f64();
    state.metrics.model_load_seconds.set(secs);
    tracing::info!(seconds = secs, "model loaded and warmed up; ready");
    Ok(())
}

/// Whether the GPU network is the cuDNN one (GPU_ENGINE, on a CUDA build and device, f16).
fn use_cudnn(args: &ServeArgs, device: &Device) -> bool {
    cfg!(feature = "cuda")
        && matches!(device, Device::Cuda(_))
        && args.gpu_engine != GpuEngine::Candle
        && args.gpu_dtype == GpuDtype::F16
}

/// The network for `device`: on a GPU the cuDNN engine unless GPU_ENGINE says candle; with
/// GPU_ENGINE=auto a cuDNN that cannot start falls back to candle, loudly.
fn build_model(
    args: &ServeArgs,
    device: &Device,
    w: &weights::Weights,
    gpu_dtype: candle_core::DType,
    max_batch: usize,
) -> anyhow::Result<Model> {
    let built = |w: &weights::Weights| {
        Model::with_gpu_dtype(w, device, gpu_dtype).map_err(|e| {
            anyhow::anyhow!("{}: cannot build ResNet50: {e}", args.model_path.display())
        })
    };
    if !use_cudnn(args, device) {
        if args.gpu_engine == GpuEngine::Cudnn && !matches!(device, Device::Cpu) {
            anyhow::bail!("GPU_ENGINE=cudnn needs GPU_DTYPE=f16 and a CUDA build");
        }
        return built(w);
    }
    #[cfg(feature = "cuda")]
    {
        let opts = crate::model::gpu::cudnn::GpuOptions {
            graphs: args.gpu_graphs,
            ..Default::default()
        };
        match Model::cudnn(w, 0, opts, max_batch) {
            Ok(m) => {
                tracing::info!(libraries = %crate::model::gpu::cudnn::versions(), "cuDNN engine built");
                Ok(m)
            }
            Err(e) if args.gpu_engine == GpuEngine::Auto => {
                tracing::warn!(error = %format!("{e:#}"), "the cuDNN engine cannot start (GPU_ENGINE=auto): falling back to candle's kernels, several times slower");
                let w = weights::load(&args.model_path, device)?;
                built(&w)
            }
            Err(e) => Err(e.context("GPU_ENGINE=cudnn")),
        }
    }
    // Without the `cuda` feature use_cudnn is always false: returned above.
    #[cfg(not(feature = "cuda"))]
    unreachable!("use_cudnn needs the cuda feature (max_batch {max_batch})")
}

/// The model threads the engine runs: one, or on the cuDNN engine `lanes` of them.
fn model_threads(model: Model, lanes: usize) -> anyhow::Result<Vec<Box<dyn BatchModel>>> {
    #[cfg(feature = "cuda")]
    if let Model::Cudnn {
        net,
        lane,
        max_batch,
    } = model
    {
        let first = lane.into_inner().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<Box<dyn BatchModel>> = vec![Box::new(first)];
        for _ in 1..lanes.max(1) {
            out.push(Box::new(crate::model::gpu::cudnn::Lane::new(
                net.clone(),
                max_batch,
            )?));
        }
        return Ok(out);
    }
    let _ = lanes;
    Ok(vec![Box::new(model)])
}

fn routes(cfg: &mut web::ServiceConfig) {
    // Each resource answers other methods with a JSON 405 instead of actix's empty 404.
    fn resource(path: &str) -> actix_web::Resource {
        web::resource(path).default_service(web::to(ops::method_not_allowed))
    }
    cfg.service(resource("/predict").route(web::post().to(predict::predict)))
        .service(resource("/health").route(web::get().to(ops::health)))
        .service(resource("/ready").route(web::get().to(ops::ready)))
        .service(resource("/version").route(web::get().to(ops::version)))
        .service(resource("/metrics").route(web::get().to(ops::metrics)))
        .service(resource("/v2").route(web::get().to(v2::server_metadata)))
        .service(resource("/v2/health/live").route(web::get().to(v2::live)))
        .service(resource("/v2/health/ready").route(web::get().to(v2::server_ready)));
    // Each model path with and without `/versions/{version}`, as tritonclient and KServe use.
    for base in [
        "/v2/models/{model}",
        "/v2/models/{model}/versions/{version}",
    ] {
        cfg.service(resource(base).route(web::get().to(v2::model_metadata)))
            .service(resource(&format!("{base}/ready")).route(web::get().to(v2::model_ready)))
            .service(resource(&format!("{base}/config")).route(web::get().to(v2::model_config)))
            .service(resource(&format!("{base}/infer")).route(web::post().to(v2::infer)));
    }
}

/// Runs the server until SIGTERM/SIGINT has been handled; a weights error ends the process (exit 1).
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let device = select_device(args.device)?;
    let listener = TcpListener::bind((args.host.as_str(), args.port))
        .map_err(|e| anyhow::anyhow!("cannot listen on {}:{}: {e}", args.host, args.port))?;
    let addr = listener.local_addr()?;
    let workers = if args.http_workers == 0 {
        num_cpus()
    } else {
        args.http_workers
    };
    let grace = Duration::from_secs_f64(args.shutdown_grace_seconds);
    let stop_timeout = args.shutdown_timeout_seconds;
    let dct_scaling = args.jpeg_dct_scaling == DctScaling::On;
    let mut app = AppState::new(args);
    if dct_scaling {
        // Large JPEGs decode at a reduced size; the resize still does the last 2x or more.
        app.decode_limits.jpeg_min_side = 2 * crate::preprocess::RESIZE_SHORT_SIDE;
    }
    let state = web::Data::new(app);
    let _ = state.device.set(device_name(&device));
    tracing::info!(address = %addr, device = state.device_name(), "listening on http://{addr}");

    let loader_state = state.clone().into_inner();
    std::thread::Builder::new()
        .name("model-load".into())
        .spawn(move || {
            // A panic while loading must end the process too, not leave it "loading" forever.
            let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                load_model(&loader_state, device)
            }))
            .unwrap_or_else(|_| Err(anyhow::anyhow!("loading the model panicked")));
            if let Err(e) = loaded {
                // One line, no backtrace: the file and tensor are in the message.
                eprintln!("inference-server: error: {e:#}");
                std::process::exit(1);
            }
        })?;

    let app_state = state.clone();
    let server = HttpServer::new(move || {
        let draining = app_state.clone();
        App::new()
            .app_data(app_state.clone())
            // gzip answers for clients that ask (Accept-Encoding): v2 JSON logits, /metrics.
            .wrap(actix_web::middleware::Compress::default())
            // While draining, every answer closes its connection: keep-alive clients reconnect
            // (to another pod) instead of reusing a connection to one that is going away.
            .wrap_fn(move |req, srv| {
                let fut = srv.call(req);
                let draining = draining.clone();
                async move {
                    let mut res = fut.await?;
                    if draining.phase() == Phase::Draining {
                        res.response_mut()
                            .head_mut()
                            .set_connection_type(actix_web::http::ConnectionType::Close);
                    }
                    Ok(res)
                }
            })
            .configure(routes)
            .default_service(web::to(ops::not_found))
    })
    .on_connect(peer::on_connect)
    .workers(workers)
    .disable_signals()
    .shutdown_timeout(stop_timeout)
    .listen(listener)?
    .run();

    let handle = server.handle();
    actix_web::rt::spawn(async move {
        wait_for_signal().await;
        state
            .draining
            .store(true, std::sync::atomic::Ordering::SeqCst);
        tracing::info!(
            grace_seconds = grace.as_secs_f64(),
            "shutdown requested: /ready now 503, still serving during the grace period"
        );
        tokio::time::sleep(grace).await;
        tracing::info!("closing the listener; waiting for in-flight requests");
        handle.stop(true).await;
    });
    server.await?;
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}
