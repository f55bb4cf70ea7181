//! Outgoing FTP(S) calls: `GET` downloads `path` below the URL's folder, `PUT`/`POST`
//! uploads the body there. The user comes from the URL (default `anonymous`), the
//! password from the URL or else the primary token, and the secondary token on a refused
//! login. FTPS is explicit (AUTH TLS) with the node's client trust (`net::tls`).
//!
//! A session's control socket is shut down by the node's one [`watchdog`] when the run's
//! deadline passes; data connections have socket timeouts and a [`DeadlineIo`] between
//! chunks (a second handle would keep them from closing, and the server waits for that).

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use suppaftp::{FtpError, FtpStream, RustlsConnector, RustlsFtpStream};

use super::paths::{decode_component, join_path};
use super::{OutgoingResponse, time_left, watchdog};
use crate::db::models::Channel;
use crate::net::dns;

pub struct FtpCaller {
    pub max_response_bytes: usize,
    pub tls: Arc<rustls::ClientConfig>,
}

impl FtpCaller {
    pub fn call(
        &self,
        channel: &Channel,
        method: &str,
        path: &str,
        body: &[u8],
        deadline: Instant,
    ) -> Result<OutgoingResponse, String> {
        let url =
            url::Url::parse(&channel.outgoing_url).map_err(|e| format!("outgoing_url: {e}"))?;
        let secure = url.scheme() == "ftps";
        let host = url.host_str().unwrap_or_default().to_string();
        let port = url.port().unwrap_or(21);
        let user = match url.username() {
            "" => "anonymous".to_string(),
            u => decode_component(u),
        };
        let mut passwords: Vec<String> = Vec::new();
        if let Some(p) = url.password() {
            passwords.push(decode_component(p));
        } else {
            passwords.push(channel.outgoing_token_primary.clone());
            if !channel.outgoing_token_secondary.is_empty() {
                passwords.push(channel.outgoing_token_secondary.clone());
            }
        }
        let remote = join_path(url.path(), path)?;
        let upload = match method.to_ascii_uppercase().as_str() {
            "GET" | "RETR" => false,
            "PUT" | "POST" | "STOR" => true,
            other => {
                return Err(format!(
                    "FTP supports GET (download) and PUT (upload), not {other}"
                ));
            }
        };
        let addr = dns::resolve(&format!("{host}:{port}"), time_left(deadline)?)
            .map_err(|e| format!("resolving {host}: {e}"))?
            .into_iter()
            .next()
            .ok_or_else(|| format!("{host} has no address"))?;
        let mut last_error = String::new();
        for password in &passwords {
            let left = time_left(deadline)?;
            let max = self.max_response_bytes;
            let to = FtpTarget {
                addr,
                host: &host,
                user: &user,
                password,
                left,
                deadline,
            };
            let outcome = if secure {
                self.ftps_session(&to, |s| transfer(s, upload, &remote, body, max, deadline))
            } else {
                self.ftp_session(&to, |s| transfer(s, upload, &remote, body, max, deadline))
            };
            if Instant::now() >= deadline {
                return Err("the FTP call ran out of time".into());
            }
            match outcome {
                Ok(r) => return Ok(r),
                Err(FtpFailure::Login(e)) => last_error = e,
                Err(FtpFailure::Other(e)) => return Err(e),
            }
        }
        Err(format!("FTP login refused: {last_error}"))
    }

    fn ftp_session(
        &self,
        to: &FtpTarget<'_>,
        work: impl FnOnce(&mut FtpStream) -> Result<OutgoingResponse, String>,
    ) -> Result<OutgoingResponse, FtpFailure> {
        let (left, user, password) = (to.left, to.user, to.password);
        let stream = connect(to.addr, left)?;
        let _watch = watchdog::watch(&stream, to.deadline);
        let mut ftp = FtpStream::connect_with_stream(stream)
            .map_err(|e| FtpFailure::Other(format!("FTP connect: {e}")))?
            .passive_stream_builder(move |a| {
                connect(a, left)
                    .map_err(|e| FtpError::ConnectionError(std::io::Error::other(e.to_string())))
            });
        ftp.login(user, password).map_err(login_failure)?;
        let out = work(&mut ftp).map_err(FtpFailure::Other)?;
        let _ = ftp.quit();
        Ok(out)
    }

    fn ftps_session(
        &self,
        to: &FtpTarget<'_>,
        work: impl FnOnce(&mut RustlsFtpStream) -> Result<OutgoingResponse, String>,
    ) -> Result<OutgoingResponse, FtpFailure> {
        let (left, user, password) = (to.left, to.user, to.password);
        let stream = connect(to.addr, left)?;
        let _watch = watchdog::watch(&stream, to.deadline);
        let ftp = RustlsFtpStream::connect_with_stream(stream)
            .map_err(|e| FtpFailure::Other(format!("FTPS connect: {e}")))?
            .passive_stream_builder(move |a| {
                connect(a, left)
                    .map_err(|e| FtpError::ConnectionError(std::io::Error::other(e.to_string())))
            });
        let mut ftp = ftp
            .into_secure(RustlsConnector::from(self.tls.clone()), to.host)
            .map_err(|e| FtpFailure::Other(format!("FTPS handshake: {e}")))?;
        ftp.login(user, password).map_err(login_failure)?;
        let out = work(&mut ftp).map_err(FtpFailure::Other)?;
        let _ = ftp.quit();
        Ok(out)
    }
}

/// Where and as whom one FTP session logs in.
struct FtpTarget<'a> {
    addr: SocketAddr,
    host: &'a str,
    user: &'a str,
    password: &'a str,
    left: Duration,
    deadline: Instant,
}

enum FtpFailure {
    /// The server refused the credentials: the next password may do.
    Login(String),
    Other(String),
}

impl std::fmt::Display for FtpFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FtpFailure::Login(e) | FtpFailure::Other(e) => f.write_str(e),
        }
    }
}

fn login_failure(e: FtpError) -> FtpFailure {
    match &e {
        FtpError::UnexpectedResponse(r) if r.status.code() == 530 => {
            FtpFailure::Login(e.to_string())
        }
        _ => FtpFailure::Other(format!("FTP login: {e}")),
    }
}

fn connect(addr: SocketAddr, left: Duration) -> Result<TcpStream, FtpFailure> {
    let stream = TcpStream::connect_timeout(&addr, left)
        .map_err(|e| FtpFailure::Other(format!("connecting to {addr}: {e}")))?;
    let _ = stream.set_read_timeout(Some(left));
    let _ = stream.set_write_timeout(Some(left));
    Ok(stream)
}

/// A reader that fails once the deadline has passed (checked between chunks), so that a
/// slow-dripping peer cannot stretch a transfer forever.
struct DeadlineIo<R> {
    inner: R,
    deadline: Instant,
}

impl<R: Read> Read for DeadlineIo<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if Instant::now() >= self.deadline {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the transfer ran out of time",
            ));
        }
        // Small chunks keep the checks frequent.
        let n = buf.len().min(64 * 1024);
        self.inner.read(&mut buf[..n])
    }
}

fn transfer<T: suppaftp::TlsStream>(
    ftp: &mut suppaftp::ImplFtpStream<T>,
    upload: bool,
    remote: &str,
    body: &[u8],
    max: usize,
    deadline: Instant,
) -> Result<OutgoingResponse, String> {
    ftp.transfer_type(suppaftp::types::FileType::Binary)
        .map_err(|e| format!("FTP TYPE I: {e}"))?;
    if upload {
        let mut reader = DeadlineIo {
            inner: body,
            deadline,
        };
        ftp.put_file(remote, &mut reader)
            .map_err(|e| format!("FTP upload of {remote}: {e}"))?;
        Ok(OutgoingResponse {
            status: 200,
            body: Vec::new(),
            headers: Vec::new(),
        })
    } else {
        // Read at most one byte past the limit: a huge file is refused, not buffered.
        let data = ftp
            .retr(remote, |reader| {
                let mut buf = Vec::new();
                DeadlineIo {
                    inner: reader,
                    deadline,
                }
                .take(max as u64 + 1)
                .read_to_end(&mut buf)
                .map_err(FtpError::ConnectionError)?;
                Ok(buf)
            })
            .map_err(|e| format!("FTP download of {remote}: {e}"))?;
        if data.len() > max {
            return Err(format!("the downloaded file is larger than {max} bytes"));
        }
        Ok(OutgoingResponse {
            status: 200,
            body: data,
            headers: Vec::new(),
        })
    }
}
