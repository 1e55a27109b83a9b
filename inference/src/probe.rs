//! `inference-server probe`: a container health check that needs no curl in the image. Docker's
//! `HEALTHCHECK` and ECS container health checks run a command inside the container; this one
//! asks the server on loopback and exits 0 on a 2xx answer, 1 otherwise.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// GET `path` from `host:port` and return the HTTP status code, or why there is none. The whole
/// exchange (connect, write, read the status line) must fit in `timeout`.
pub fn http_status(host: &str, port: u16, path: &str, timeout: Duration) -> Result<u16, String> {
    let deadline = Instant::now() + timeout;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| format!("no answer within {timeout:?}"))
    };
    let addr = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host} has no address"))?;
    let mut stream = TcpStream::connect_timeout(&addr, left()?).map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(left()?))
        .map_err(|e| e.to_string())?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: inference-server-probe\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    // Only the status line matters: read until its end (or until the server closes).
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 4096 {
        stream
            .set_read_timeout(Some(left()?))
            .map_err(|e| e.to_string())?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return Err(format!("no answer within {timeout:?}"));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    parse_status_line(&head)
}

/// `HTTP/1.1 200 OK` → 200.
fn parse_status_line(head: &[u8]) -> Result<u16, String> {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    match (parts.next(), parts.next().map(str::parse::<u16>)) {
        (Some(v), Some(Ok(code))) if v.starts_with("HTTP/") => Ok(code),
        _ if line.trim().is_empty() => Err("the connection closed without an answer".into()),
        _ => Err(format!("not an HTTP answer: {:?}", line.trim())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A one-shot server that answers every connection with `reply` (after reading the request).
    fn serve(reply: &'static [u8], delay: Duration) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = listener.accept() {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                std::thread::sleep(delay);
                let _ = s.write_all(reply);
            }
        });
        port
    }

    #[test]
    fn reads_the_status_code() {
        let port = serve(
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}",
            Duration::ZERO,
        );
        assert_eq!(
            http_status("127.0.0.1", port, "/health", Duration::from_secs(2)),
            Ok(200)
        );
        let port = serve(b"HTTP/1.1 503 Service Unavailable\r\n\r\n", Duration::ZERO);
        assert_eq!(
            http_status("127.0.0.1", port, "/ready", Duration::from_secs(2)),
            Ok(503)
        );
    }

    #[test]
    fn a_slow_server_times_out() {
        let port = serve(b"HTTP/1.1 200 OK\r\n\r\n", Duration::from_secs(3));
        let t = Instant::now();
        let err =
            http_status("127.0.0.1", port, "/health", Duration::from_millis(300)).unwrap_err();
        assert!(err.contains("no answer"), "{err}");
        assert!(t.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn nothing_listening_and_garbage_are_errors() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        assert!(http_status("127.0.0.1", port, "/", Duration::from_secs(1)).is_err());
        let port = serve(b"SSH-2.0-OpenSSH\r\n", Duration::ZERO);
        let err = http_status("127.0.0.1", port, "/", Duration::from_secs(1)).unwrap_err();
        assert!(err.contains("not an HTTP answer"), "{err}");
        let port = serve(b"", Duration::ZERO);
        assert!(http_status("127.0.0.1", port, "/", Duration::from_secs(1)).is_err());
    }
}
