//! Whether the client of a request is still there. actix-web keeps serving a request whose
//! connection the client has closed (it answers into the void), so a burst of clients that time
//! out and go away would still cost a decode and a forward pass each. The HTTP layer watches the
//! connection while a request waits and drops the work once the client is gone: a request not
//! yet queued is never decoded, and the model thread skips a queued one whose answer nobody
//! awaits.

use std::net::TcpStream;
use std::os::fd::AsFd;
use std::time::Duration;

use actix_web::HttpRequest;
use actix_web::dev::Extensions;

use super::error::ApiError;

/// How often a waiting request looks at its connection.
const POLL: Duration = Duration::from_millis(50);

/// A second handle on the connection's socket (a `dup`), kept with the connection's data.
struct PeerSocket(TcpStream);

/// `HttpServer::on_connect`: remember each TCP connection's socket.
pub fn on_connect(conn: &dyn std::any::Any, data: &mut Extensions) {
    if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>()
        && let Ok(fd) = tcp.as_fd().try_clone_to_owned()
    {
        data.insert(PeerSocket(TcpStream::from(fd)));
    }
}

/// True once the client has closed or reset the connection. Looks without taking anything: a
/// byte waiting to be read (a pipelined request) means it is still there; an orderly end of the
/// stream or an error means it is gone. (The socket is non-blocking: tokio made it so.)
pub fn gone(req: &HttpRequest) -> bool {
    let Some(PeerSocket(socket)) = req.conn_data::<PeerSocket>() else {
        return false;
    };
    match socket.peek(&mut [0u8; 1]) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

/// Runs `work` while the client stays; once it is gone, drops `work` (and with it the queued
/// job's reply, so the model thread skips it) and answers `client_gone`.
pub async fn unless_gone<T>(
    req: &HttpRequest,
    work: impl Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    let watch = async {
        loop {
            tokio::time::sleep(POLL).await;
            if gone(req) {
                return;
            }
        }
    };
    tokio::select! {
        r = work => r,
        () = watch => Err(ApiError::client_gone()),
    }
}
