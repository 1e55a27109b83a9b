use clap::Parser;
use inference_server::config::num_cpus;
use inference_server::config::{Cli, Command, LogFormat, ProbeArgs, ServeArgs};
use inference_server::http::server;
use inference_server::model::cpu::isa::Isa;
use inference_server::model::weights;
use inference_server::probe;

fn init_logging(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    // A forced kernel set the CPU lacks is a set-up error: say so before anything starts.
    Isa::from_env().map_err(anyhow::Error::msg)?;
    init_logging(args.log_format);
    limit_malloc_arenas();
    let threads = if args.threads == 0 {
        num_cpus()
    } else {
        args.threads
    };
    // candle's CPU kernels size their parallelism from RAYON_NUM_THREADS; set it before any
    // thread exists so the value is read consistently.
    // SAFETY: single-threaded at this point (no runtime, no pools started yet).
    unsafe { std::env::set_var("RAYON_NUM_THREADS", threads.to_string()) };
    rayon_pool(threads)?;
    actix_web::rt::System::new().block_on(server::serve(args))
}

/// glibc gives each thread that allocates its own arena (up to 8 per core), and a freed decode
/// buffer under its dynamic mmap threshold stays in that arena: with `DECODE_THREADS` threads
/// the resident memory grew past the decode budget by a retained buffer per thread (204 MiB
/// over idle for a 128 MiB budget in `tests/hostile.rs`). Two arenas keep freed memory shared
/// and reused; measured on 2 cores it cost no throughput and lowered the peak RSS by ~70 MiB.
/// `MALLOC_ARENA_MAX` in the environment still wins.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; called before other threads start.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
    }
}

fn rayon_pool(threads: usize) -> anyhow::Result<()> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("infer-{i}"))
        .build_global()
        .map_err(|e| anyhow::anyhow!("cannot start the inference thread pool: {e}"))
}

/// Exit code of `inference-server probe`: 0 healthy, 1 not (the reason on stderr).
fn probe(args: &ProbeArgs) -> i32 {
    let timeout = std::time::Duration::from_secs_f64(args.timeout_seconds);
    let url = format!("http://{}:{}{}", args.host, args.port, args.path);
    match probe::http_status(&args.host, args.port, &args.path, timeout) {
        Ok(code) if (200..300).contains(&code) => 0,
        Ok(code) => {
            eprintln!("inference-server probe: GET {url}: HTTP {code}");
            1
        }
        Err(e) => {
            eprintln!("inference-server probe: GET {url}: {e}");
            1
        }
    }
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::GenerateWeights { seed, out }) => {
            weights::write_random(&out, seed).map(|()| {
                println!(
                    "wrote random ResNet50 weights (seed {seed}) to {}",
                    out.display()
                );
            })
        }
        Some(Command::Serve(args)) => serve(args),
        Some(Command::Probe(args)) => std::process::exit(probe(&args)),
        Some(Command::Fetch(args)) => {
            let token = std::env::var("HF_TOKEN").ok();
            match inference_server::fetch::fetch(&args, token.as_deref()) {
                Ok(line) => {
                    println!("{line}");
                    Ok(())
                }
                Err(why) => {
                    // One line naming the URI (redacted): what the pod's status shows.
                    eprintln!(
                        "inference-server fetch: {}: {why}",
                        inference_server::fetch::redact(&args.uri)
                    );
                    std::process::exit(1);
                }
            }
        }
        None => serve(cli.serve),
    };
    if let Err(e) = result {
        eprintln!("inference-server: error: {e:#}");
        std::process::exit(1);
    }
}
