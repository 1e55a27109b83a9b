//! Probes (httpGet, tcpSocket) and lifecycle hooks (sleep, httpGet, `sleep N` execs).

use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, HTTPGetAction, LifecycleHandler, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Startup,
    Liveness,
    Readiness,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Startup => "Startup",
            Kind::Liveness => "Liveness",
            Kind::Readiness => "Readiness",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    Http {
        host: String,
        port: u16,
        path: String,
        headers: Vec<(String, String)>,
    },
    Tcp {
        host: String,
        port: u16,
    },
    /// exec, grpc, https: not run; the message says why.
    Unsupported(String),
}

/// A probe with kubelet defaults filled in.
#[derive(Clone, Debug)]
pub struct Spec {
    pub action: Action,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
    /// probe-level terminationGracePeriodSeconds (liveness/startup kill)
    pub termination_grace: Option<i64>,
}

fn secs(v: Option<i32>, default: i32, min: i32) -> Duration {
    Duration::from_secs(v.unwrap_or(default).max(min) as u64)
}

/// A named or numbered port of the container.
pub fn resolve_port(c: &Container, port: &IntOrString) -> Result<u16, String> {
    match port {
        IntOrString::Int(p) => u16::try_from(*p).map_err(|_| format!("invalid port {p}")),
        IntOrString::String(s) => {
            if let Ok(p) = s.parse::<u16>() {
                return Ok(p);
            }
            c.ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(s.as_str()))
                .and_then(|p| u16::try_from(p.container_port).ok())
                .ok_or_else(|| format!("port name {s} not found in container {}", c.name))
        }
    }
}

fn http_action(c: &Container, h: &HTTPGetAction, pod_ip: &str) -> Action {
    if h.scheme
        .as_deref()
        .is_some_and(|s| s.eq_ignore_ascii_case("HTTPS"))
    {
        return Action::Unsupported(
            "HTTPS probes and hooks are not supported by local-node".into(),
        );
    }
    match resolve_port(c, &h.port) {
        Ok(port) => Action::Http {
            host: h
                .host
                .clone()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| pod_ip.to_string()),
            port,
            path: h
                .path
                .clone()
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "/".into()),
            headers: h
                .http_headers
                .iter()
                .flatten()
                .map(|h| (h.name.clone(), h.value.clone()))
                .collect(),
        },
        Err(e) => Action::Unsupported(e),
    }
}

pub fn spec(c: &Container, p: &Probe, pod_ip: &str) -> Spec {
    let action = if let Some(h) = &p.http_get {
        http_action(c, h, pod_ip)
    } else if let Some(t) = &p.tcp_socket {
        match resolve_port(c, &t.port) {
            Ok(port) => Action::Tcp {
                host: t
                    .host
                    .clone()
                    .filter(|h| !h.is_empty())
                    .unwrap_or_else(|| pod_ip.into()),
                port,
            },
            Err(e) => Action::Unsupported(e),
        }
    } else if p.exec.is_some() {
        Action::Unsupported(
            "exec probes are not supported by local-node (no container to exec in)".into(),
        )
    } else if p.grpc.is_some() {
        Action::Unsupported("gRPC probes are not supported by local-node".into())
    } else {
        Action::Unsupported("probe without a handler".into())
    };
    Spec {
        action,
        initial_delay: secs(p.initial_delay_seconds, 0, 0),
        period: secs(p.period_seconds, 10, 1),
        timeout: secs(p.timeout_seconds, 1, 1),
        success_threshold: p.success_threshold.unwrap_or(1).max(1) as u32,
        failure_threshold: p.failure_threshold.unwrap_or(3).max(1) as u32,
        termination_grace: p.termination_grace_period_seconds,
    }
}

/// Ok(()) on success, Err(kubelet-like failure message) otherwise.
pub async fn run(action: &Action, timeout: Duration) -> Result<(), String> {
    match action {
        Action::Unsupported(_) => Ok(()),
        Action::Tcp { host, port } => {
            match tokio::time::timeout(timeout, TcpStream::connect(addr(host, *port))).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("dial tcp {host}:{port}: {e}")),
                Err(_) => Err(format!("dial tcp {host}:{port}: i/o timeout")),
            }
        }
        Action::Http {
            host,
            port,
            path,
            headers,
        } => {
            let url = format!("http://{host}:{port}{path}");
            match tokio::time::timeout(timeout, http_get(host, *port, path, headers)).await {
                Ok(Ok(code)) if (200..400).contains(&code) => Ok(()),
                Ok(Ok(code)) => Err(format!("HTTP probe failed with statuscode: {code}")),
                Ok(Err(e)) => Err(format!("Get \"{url}\": {e}")),
                Err(_) => Err(format!(
                    "Get \"{url}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
                )),
            }
        }
    }
}

fn addr(host: &str, port: u16) -> String {
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(ip)) => format!("[{ip}]:{port}"),
        _ => format!("{host}:{port}"),
    }
}

/// A minimal HTTP/1.1 GET; returns the status code.
async fn http_get(
    host: &str,
    port: u16,
    path: &str,
    headers: &[(String, String)],
) -> std::io::Result<u16> {
    let mut s = TcpStream::connect(addr(host, port)).await?;
    let mut req = format!("GET {path} HTTP/1.1\r\n");
    let has = |n: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(n));
    if !has("host") {
        req.push_str(&format!("Host: {}\r\n", addr(host, port)));
    }
    if !has("user-agent") {
        req.push_str("User-Agent: kube-probe/local-node\r\n");
    }
    if !has("accept") {
        req.push_str("Accept: */*\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while !buf.windows(2).any(|w| w == b"\r\n") {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "EOF",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed HTTP response")
        })
}

/// What a hook does here.
#[derive(Debug, PartialEq)]
pub enum Hook {
    Sleep(Duration),
    Http(Action),
    Unsupported(String),
}

/// `sleep N`, `/bin/sleep N`, `sh -c "sleep N"` (also with `exec` or `&&`-free trailing text).
fn sleep_command(cmd: &[String]) -> Option<Duration> {
    let words: Vec<&str> = match cmd {
        [sh, flag, script]
            if (sh.ends_with("/sh") || sh == "sh" || sh.ends_with("bash")) && flag == "-c" =>
        {
            script.split_whitespace().collect()
        }
        _ => cmd.iter().map(String::as_str).collect(),
    };
    let words: &[&str] = match words.as_slice() {
        ["exec", rest @ ..] => rest,
        w => w,
    };
    match words {
        [sleep, n] if *sleep == "sleep" || sleep.ends_with("/sleep") => {
            let n = n.trim_end_matches(';').trim_end_matches('s');
            n.parse::<f64>()
                .ok()
                .filter(|n| *n >= 0.0)
                .map(Duration::from_secs_f64)
        }
        _ => None,
    }
}

pub fn hook(c: &Container, h: &LifecycleHandler, pod_ip: &str) -> Hook {
    if let Some(s) = &h.sleep {
        Hook::Sleep(Duration::from_secs(s.seconds.max(0) as u64))
    } else if let Some(http) = &h.http_get {
        Hook::Http(http_action(c, http, pod_ip))
    } else if let Some(e) = &h.exec {
        let cmd = e.command.clone().unwrap_or_default();
        match sleep_command(&cmd) {
            Some(d) => Hook::Sleep(d),
            None => Hook::Unsupported(format!(
                "exec hooks other than `sleep N` are not supported by local-node (command {cmd:?})"
            )),
        }
    } else if h.tcp_socket.is_some() {
        // deprecated; the kubelet does not run it either
        Hook::Sleep(Duration::ZERO)
    } else {
        Hook::Unsupported("hook without a handler".into())
    }
}

/// Runs a hook; Err(message) if it failed or is unsupported.
pub async fn run_hook(h: &Hook, limit: Duration) -> Result<(), String> {
    match h {
        Hook::Sleep(d) => {
            tokio::time::sleep((*d).min(limit)).await;
            Ok(())
        }
        Hook::Http(Action::Unsupported(m)) | Hook::Unsupported(m) => Err(m.clone()),
        Hook::Http(a) => run(a, limit).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn recognises_sleep_commands() {
        assert_eq!(
            sleep_command(&s(&["sleep", "5"])),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            sleep_command(&s(&["/bin/sleep", "2"])),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            sleep_command(&s(&["/bin/sh", "-c", "sleep 3"])),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            sleep_command(&s(&["sh", "-c", "exec sleep 1.5"])),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(sleep_command(&s(&["sh", "-c", "curl x && sleep 3"])), None);
        assert_eq!(sleep_command(&s(&["nginx", "-s", "quit"])), None);
    }

    #[tokio::test]
    async fn http_and_tcp_probes() {
        use tokio::net::TcpListener;
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            for code in [200u16, 503] {
                let (mut s, _) = l.accept().await.unwrap();
                let mut b = [0u8; 1024];
                let _ = s.read(&mut b).await;
                let _ = s
                    .write_all(format!("HTTP/1.1 {code} X\r\ncontent-length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        let http = Action::Http {
            host: "127.0.0.1".into(),
            port,
            path: "/ready".into(),
            headers: vec![],
        };
        let t = Duration::from_secs(2);
        assert_eq!(run(&http, t).await, Ok(()));
        assert_eq!(
            run(&http, t).await,
            Err("HTTP probe failed with statuscode: 503".into())
        );
        assert!(run(&http, t).await.is_err()); // nobody listens any more
        assert!(
            run(
                &Action::Tcp {
                    host: "127.0.0.1".into(),
                    port
                },
                t
            )
            .await
            .is_err()
        );
    }
}
