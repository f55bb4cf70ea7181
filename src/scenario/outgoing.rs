//! Calls from scenarios to the channel's outside system (`outgoing_url`).
//!
//! HTTP(S): `outgoing_url` + `path`, with `Authorization: Bearer <primary token>`; on
//! 401 or 403 the call is made once more with the secondary token (token rotation).
//! FTP(S): `GET` downloads `path` below the URL's folder, `PUT`/`POST` uploads the body
//! there. The user comes from the URL (default `anonymous`), the password from the URL
//! or else the primary token, and the secondary token on a refused login. FTPS is
//! explicit (AUTH TLS) with the web PKI roots.
//!
//! Everything here blocks and runs on scenario threads, bounded by the run's deadline.

use std::io::Read;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use suppaftp::{FtpError, FtpStream, RustlsConnector, RustlsFtpStream};

use crate::db::models::Channel;

/// What an outgoing call answered.
#[derive(Debug, Clone, PartialEq)]
pub struct OutgoingResponse {
    pub status: u16,
    pub body: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

/// The longest a name lookup may take.
const DNS_TIMEOUT: Duration = Duration::from_secs(5);

/// Resolves `host:port` on a helper thread, giving up after `timeout` (the system
/// resolver has no timeout of its own).
pub(crate) fn resolve(netloc: &str, timeout: Duration) -> std::io::Result<Vec<SocketAddr>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let owned = netloc.to_string();
    std::thread::Builder::new()
        .name("dns".into())
        .spawn(move || {
            let _ = tx.send(owned.to_socket_addrs().map(|a| a.collect::<Vec<_>>()));
        })?;
    rx.recv_timeout(timeout).unwrap_or_else(|_| {
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("resolving {netloc} took too long"),
        ))
    })
}

/// Shuts the FTP control connection down when the run's deadline passes, so that a
/// stalled server cannot hold a scenario thread past it. Data connections are not
/// watched (a second handle would keep them from closing, and the server waits for
/// that close): they have socket timeouts and a [`DeadlineIo`] between chunks.
#[derive(Clone, Default)]
struct Watchdog {
    sockets: Arc<std::sync::Mutex<Vec<TcpStream>>>,
    done: Arc<std::sync::atomic::AtomicBool>,
}

impl Watchdog {
    fn start(deadline: Instant) -> Watchdog {
        let dog = Watchdog::default();
        let watcher = dog.clone();
        let _ = std::thread::Builder::new()
            .name("ftp-watchdog".into())
            .spawn(move || {
                while !watcher.done.load(std::sync::atomic::Ordering::Acquire) {
                    let now = Instant::now();
                    if now >= deadline {
                        if let Ok(sockets) = watcher.sockets.lock() {
                            for s in sockets.iter() {
                                let _ = s.shutdown(std::net::Shutdown::Both);
                            }
                        }
                        return;
                    }
                    std::thread::park_timeout((deadline - now).min(Duration::from_millis(100)));
                }
            });
        dog
    }

    fn watch(&self, stream: &TcpStream) {
        if let (Ok(clone), Ok(mut sockets)) = (stream.try_clone(), self.sockets.lock()) {
            sockets.push(clone);
        }
    }
}

impl Watchdog {
    /// The session is over: the watcher stops without touching the sockets.
    fn finish(&self) {
        self.done.store(true, std::sync::atomic::Ordering::Release);
    }
}

pub struct OutgoingClient {
    agent: ureq::Agent,
    timeout: Duration,
    max_response_bytes: usize,
}

impl OutgoingClient {
    pub fn new(timeout: Duration, max_response_bytes: usize) -> OutgoingClient {
        OutgoingClient {
            agent: ureq::AgentBuilder::new()
                .timeout_connect(Duration::from_secs(5))
                .redirects(0)
                // ureq's own timeouts do not cover name resolution.
                .resolver(|netloc: &str| resolve(netloc, DNS_TIMEOUT))
                .build(),
            timeout,
            max_response_bytes,
        }
    }

    fn time_left(&self, deadline: Instant) -> Result<Duration, String> {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .min(self.timeout);
        if left.is_zero() {
            Err("no time left for an outgoing request".into())
        } else {
            Ok(left)
        }
    }

    /// One call to the channel's outside system.
    pub fn request(
        &self,
        channel: &Channel,
        method: &str,
        path: &str,
        body: &[u8],
        headers: &[(String, String)],
        deadline: Instant,
    ) -> Result<OutgoingResponse, String> {
        let base = channel.outgoing_url.as_str();
        if base.is_empty() {
            return Err("the channel has no outgoing_url".into());
        }
        let lower = base.to_ascii_lowercase();
        if lower.starts_with("ftp://") || lower.starts_with("ftps://") {
            return self.ftp(channel, method, path, body, deadline);
        }
        let url = join_url(base, path);
        let tokens = [
            channel.outgoing_token_primary.as_str(),
            channel.outgoing_token_secondary.as_str(),
        ];
        let mut last = None;
        for (attempt, token) in tokens.iter().enumerate() {
            if attempt == 1 && token.is_empty() {
                break;
            }
            let response = self.http_once(&url, method, body, headers, token, deadline)?;
            let refused = matches!(response.status, 401 | 403);
            last = Some(response);
            if !refused {
                break;
            }
        }
        last.ok_or_else(|| "no request was made".to_string())
    }

    fn http_once(
        &self,
        url: &str,
        method: &str,
        body: &[u8],
        headers: &[(String, String)],
        token: &str,
        deadline: Instant,
    ) -> Result<OutgoingResponse, String> {
        let mut req = self
            .agent
            .request(&method.to_ascii_uppercase(), url)
            .timeout(self.time_left(deadline)?);
        for (name, value) in headers {
            req = req.set(name, value);
        }
        if !token.is_empty() {
            req = req.set("Authorization", &format!("Bearer {token}"));
        }
        let response = match req.send_bytes(body) {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(ureq::Error::Transport(t)) => {
                return Err(format!("outgoing request failed: {}", t.kind()));
            }
        };
        let status = response.status();
        let headers = response
            .headers_names()
            .into_iter()
            .filter_map(|name| {
                response
                    .header(&name)
                    .map(|v| (name.clone(), v.to_string()))
            })
            .collect();
        let mut body = Vec::new();
        response
            .into_reader()
            .take(self.max_response_bytes as u64 + 1)
            .read_to_end(&mut body)
            .map_err(|e| format!("reading the outgoing response: {e}"))?;
        if body.len() > self.max_response_bytes {
            return Err(format!(
                "the outgoing response is larger than {} bytes",
                self.max_response_bytes
            ));
        }
        Ok(OutgoingResponse {
            status,
            body,
            headers,
        })
    }

    fn ftp(
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
            u => percent_decode(u),
        };
        let mut passwords: Vec<String> = Vec::new();
        if let Some(p) = url.password() {
            passwords.push(percent_decode(p));
        } else {
            passwords.push(channel.outgoing_token_primary.clone());
            if !channel.outgoing_token_secondary.is_empty() {
                passwords.push(channel.outgoing_token_secondary.clone());
            }
        }
        let remote = join_path(url.path(), path);
        let upload = match method.to_ascii_uppercase().as_str() {
            "GET" | "RETR" => false,
            "PUT" | "POST" | "STOR" => true,
            other => {
                return Err(format!(
                    "FTP supports GET (download) and PUT (upload), not {other}"
                ));
            }
        };
        let addr = resolve(
            &format!("{host}:{port}"),
            self.time_left(deadline)?.min(DNS_TIMEOUT),
        )
        .map_err(|e| format!("resolving {host}: {e}"))?
        .into_iter()
        .next()
        .ok_or_else(|| format!("{host} has no address"))?;
        let mut last_error = String::new();
        for password in &passwords {
            let left = self.time_left(deadline)?;
            let dog = Watchdog::start(deadline);
            let max = self.max_response_bytes;
            let to = FtpTarget {
                addr,
                host: &host,
                user: &user,
                password,
                left,
                dog: &dog,
            };
            let outcome = if secure {
                self.ftps_session(&to, |s| transfer(s, upload, &remote, body, max, deadline))
            } else {
                self.ftp_session(&to, |s| transfer(s, upload, &remote, body, max, deadline))
            };
            dog.finish();
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
        to.dog.watch(&stream);
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
        to.dog.watch(&stream);
        let ftp = RustlsFtpStream::connect_with_stream(stream)
            .map_err(|e| FtpFailure::Other(format!("FTPS connect: {e}")))?
            .passive_stream_builder(move |a| {
                connect(a, left)
                    .map_err(|e| FtpError::ConnectionError(std::io::Error::other(e.to_string())))
            });
        let mut ftp = ftp
            .into_secure(RustlsConnector::from(tls_config()?), to.host)
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
    dog: &'a Watchdog,
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

fn tls_config() -> Result<Arc<rustls::ClientConfig>, FtpFailure> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| FtpFailure::Other(format!("TLS setup: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

/// `base` + `path`, with exactly one slash between them; an empty path is the base.
pub fn join_url(base: &str, path: &str) -> String {
    if path.is_empty() {
        return base.to_string();
    }
    match (base.ends_with('/'), path.starts_with('/')) {
        (true, true) => format!("{}{}", base, &path[1..]),
        (false, false) if !path.starts_with('?') => format!("{base}/{path}"),
        _ => format!("{base}{path}"),
    }
}

fn join_path(folder: &str, file: &str) -> String {
    let folder = percent_decode(folder);
    if file.starts_with('/') {
        return file.to_string();
    }
    let folder = folder.trim_end_matches('/');
    format!("{folder}/{file}")
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_join_with_one_slash() {
        assert_eq!(join_url("http://a/api", "orders"), "http://a/api/orders");
        assert_eq!(join_url("http://a/api/", "/orders"), "http://a/api/orders");
        assert_eq!(join_url("http://a/api", "/orders"), "http://a/api/orders");
        assert_eq!(join_url("http://a/api", "?q=1"), "http://a/api?q=1");
        assert_eq!(join_url("http://a/api", ""), "http://a/api");
        assert_eq!(join_path("/in/", "f.txt"), "/in/f.txt");
        assert_eq!(join_path("", "f.txt"), "/f.txt");
        assert_eq!(join_path("/in", "/abs.txt"), "/abs.txt");
        assert_eq!(percent_decode("a%20b+c"), "a b+c");
    }
}
