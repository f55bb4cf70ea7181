//! Local peers for outgoing calls: an HTTP receiver that records what it gets, and a
//! minimal FTP server. Both listen on loopback, on random ports.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

type Responder = Arc<dyn Fn(&Seen) -> (u16, String) + Send + Sync>;

pub struct Receiver {
    pub url: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// The CA certificate (PEM) that signed a TLS receiver's certificate.
    pub ca_pem: Option<String>,
    server: actix_web::dev::ServerHandle,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let handle = self.server.clone();
        actix_web::rt::spawn(async move { handle.stop(false).await });
    }
}

/// Holds each request (after recording it) until the test lets it go.
pub struct Hold {
    waiting: AtomicUsize,
    permits: Semaphore,
}

impl Default for Hold {
    fn default() -> Hold {
        Hold {
            waiting: AtomicUsize::new(0),
            permits: Semaphore::new(0),
        }
    }
}

impl Hold {
    /// Requests arrived and held now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Lets `n` held (or future) requests be answered.
    pub fn release(&self, n: usize) {
        self.permits.add_permits(n);
    }
}

impl Receiver {
    /// Starts a receiver answering each request with `respond(request)`.
    pub fn start(respond: impl Fn(&Seen) -> (u16, String) + Send + Sync + 'static) -> Receiver {
        Receiver::start_with(Arc::new(respond), None, None)
    }

    /// A receiver that holds every request until [`Hold::release`], then answers it
    /// with `respond(request)`.
    pub fn holding(
        respond: impl Fn(&Seen) -> (u16, String) + Send + Sync + 'static,
    ) -> (Receiver, Arc<Hold>) {
        let hold = Arc::new(Hold::default());
        let receiver = Receiver::start_with(Arc::new(respond), Some(hold.clone()), None);
        (receiver, hold)
    }

    /// An https receiver on `https://localhost:<port>`, its certificate signed by a CA
    /// made for it (`ca_pem`), which is trusted nowhere by default.
    pub fn start_tls(respond: impl Fn(&Seen) -> (u16, String) + Send + Sync + 'static) -> Receiver {
        let (config, ca_pem) = localhost_tls();
        Receiver::start_with(Arc::new(respond), None, Some((config, ca_pem)))
    }

    fn start_with(
        respond: Responder,
        hold: Option<Arc<Hold>>,
        tls: Option<(rustls::ServerConfig, String)>,
    ) -> Receiver {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let s = seen.clone();
        let server = HttpServer::new(move || {
            let (seen, respond, hold) = (s.clone(), respond.clone(), hold.clone());
            App::new().default_service(web::to(move |req: HttpRequest, body: web::Bytes| {
                let (seen, respond, hold) = (seen.clone(), respond.clone(), hold.clone());
                async move {
                    let entry = Seen {
                        method: req.method().to_string(),
                        path: req.uri().to_string(),
                        headers: req
                            .headers()
                            .iter()
                            .map(|(k, v)| {
                                (k.to_string(), v.to_str().unwrap_or_default().to_string())
                            })
                            .collect(),
                        body: body.to_vec(),
                    };
                    if let Some(hold) = hold {
                        hold.waiting.fetch_add(1, Ordering::SeqCst);
                        hold.permits.acquire().await.unwrap().forget();
                        hold.waiting.fetch_sub(1, Ordering::SeqCst);
                    }
                    let (status, text) = respond(&entry);
                    seen.lock().unwrap().push(entry);
                    let mut reply =
                        HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap());
                    reply.insert_header(("X-Receiver", "yes"));
                    // A redirect goes where its text says.
                    if (300..400).contains(&status) {
                        reply.insert_header(("Location", text.clone()));
                    }
                    reply.body(text)
                }
            }))
        })
        .workers(1)
        .disable_signals();
        let (server, scheme, host, ca_pem) = match tls {
            Some((config, ca_pem)) => (
                server
                    .bind_rustls_0_23("127.0.0.1:0", config)
                    .expect("receiver binds"),
                "https",
                "localhost",
                Some(ca_pem),
            ),
            None => (
                server.bind("127.0.0.1:0").expect("receiver binds"),
                "http",
                "127.0.0.1",
                None,
            ),
        };
        let port = server.addrs()[0].port();
        let server = server.run();
        let handle = server.handle();
        actix_web::rt::spawn(server);
        Receiver {
            url: format!("{scheme}://{host}:{port}"),
            seen,
            ca_pem,
            server: handle,
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// A minimal FTP server (USER/PASS/TYPE/PASV/STOR/RETR/QUIT), enough to check that
/// scenarios upload and download, with one accepted password.
pub struct FtpServer {
    pub port: u16,
    pub files: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    pub logins: Arc<Mutex<Vec<(String, String)>>>,
    /// With FTPS: the CA that signed the server's certificate (for --tls-ca-file).
    pub ca_pem: Option<String>,
}

/// A certificate for `localhost` signed by a CA made for it: the server side, and the
/// CA's PEM (trusted nowhere by default).
pub fn localhost_tls() -> (rustls::ServerConfig, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "oktell test receivers CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let der_key = rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.der().clone()], der_key)
    .unwrap();
    (config, ca.pem())
}

impl FtpServer {
    pub fn start(password: &str) -> FtpServer {
        FtpServer::start_with(password, false, None)
    }

    /// A server that opens the data connection for RETR and then sends nothing, ever.
    pub fn stalling(password: &str) -> FtpServer {
        FtpServer::start_with(password, true, None)
    }

    /// Explicit FTPS (AUTH TLS, PROT P) with a certificate for `localhost`.
    pub fn start_tls(password: &str) -> FtpServer {
        let (config, ca_pem) = localhost_tls();
        let mut server = FtpServer::start_with(password, false, Some(Arc::new(config)));
        server.ca_pem = Some(ca_pem);
        server
    }

    fn start_with(
        password: &str,
        stall: bool,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> FtpServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("ftp binds");
        let port = listener.local_addr().unwrap().port();
        let files: Arc<Mutex<HashMap<String, Vec<u8>>>> = Arc::default();
        let logins: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let (f, l, password) = (files.clone(), logins.clone(), password.to_string());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (f, l, p, tls) = (f.clone(), l.clone(), password.clone(), tls.clone());
                std::thread::spawn(move || {
                    let _ = serve_ftp(conn, &f, &l, &p, stall, tls);
                });
            }
        });
        FtpServer {
            port,
            files,
            logins,
            ca_pem: None,
        }
    }
}

/// A control or data connection, plain or after the TLS upgrade.
enum FtpIo {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>),
}

impl FtpIo {
    fn secure(tcp: TcpStream, config: &Arc<rustls::ServerConfig>) -> std::io::Result<FtpIo> {
        let conn = rustls::ServerConnection::new(config.clone()).map_err(std::io::Error::other)?;
        Ok(FtpIo::Tls(Box::new(rustls::StreamOwned::new(conn, tcp))))
    }

    /// Ends the stream as the protocol wants (close_notify under TLS).
    fn finish(mut self) {
        if let FtpIo::Tls(s) = &mut self {
            s.conn.send_close_notify();
            let _ = s.flush();
        }
    }

    fn line(&mut self) -> std::io::Result<Option<String>> {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        loop {
            match self.read(&mut byte)? {
                0 if line.is_empty() => return Ok(None),
                0 => break,
                _ if byte[0] == b'\n' => break,
                _ => line.push(byte[0]),
            }
        }
        Ok(Some(String::from_utf8_lossy(&line).trim_end().to_string()))
    }
}

impl Read for FtpIo {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            FtpIo::Plain(s) => s.read(buf),
            FtpIo::Tls(s) => s.read(buf),
        }
    }
}

impl Write for FtpIo {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            FtpIo::Plain(s) => s.write(buf),
            FtpIo::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            FtpIo::Plain(s) => s.flush(),
            FtpIo::Tls(s) => s.flush(),
        }
    }
}

fn serve_ftp(
    conn: TcpStream,
    files: &Mutex<HashMap<String, Vec<u8>>>,
    logins: &Mutex<Vec<(String, String)>>,
    password: &str,
    stall: bool,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> std::io::Result<()> {
    let mut ctl = FtpIo::Plain(conn);
    let mut user = String::new();
    let mut data: Option<TcpListener> = None;
    let mut protected = false;
    ctl.write_all(b"220 test ftp\r\n")?;
    loop {
        let Some(line) = ctl.line()? else {
            return Ok(());
        };
        let (cmd, arg) = line.split_once(' ').unwrap_or((line.as_str(), ""));
        match cmd.to_ascii_uppercase().as_str() {
            "AUTH" => {
                let upgrade = match (&tls, &mut ctl) {
                    (Some(config), FtpIo::Plain(tcp)) => {
                        tcp.write_all(b"234 go ahead\r\n")?;
                        Some(FtpIo::secure(tcp.try_clone()?, config)?)
                    }
                    _ => None,
                };
                match upgrade {
                    Some(secure) => ctl = secure,
                    None => ctl.write_all(b"502 no TLS here\r\n")?,
                }
            }
            "PBSZ" => ctl.write_all(b"200 ok\r\n")?,
            "PROT" => {
                protected = arg.eq_ignore_ascii_case("P");
                ctl.write_all(b"200 ok\r\n")?;
            }
            "USER" => {
                user = arg.to_string();
                ctl.write_all(b"331 password please\r\n")?;
            }
            "PASS" => {
                logins.lock().unwrap().push((user.clone(), arg.to_string()));
                if arg == password {
                    ctl.write_all(b"230 welcome\r\n")?;
                } else {
                    ctl.write_all(b"530 wrong password\r\n")?;
                }
            }
            "TYPE" => ctl.write_all(b"200 ok\r\n")?,
            "PASV" => {
                let l = TcpListener::bind("127.0.0.1:0")?;
                let p = l.local_addr()?.port();
                data = Some(l);
                ctl.write_all(
                    format!(
                        "227 Entering Passive Mode (127,0,0,1,{},{})\r\n",
                        p / 256,
                        p % 256
                    )
                    .as_bytes(),
                )?;
            }
            "STOR" | "RETR" => {
                let Some(l) = data.take() else {
                    ctl.write_all(b"425 no data connection\r\n")?;
                    continue;
                };
                ctl.write_all(b"150 opening data connection\r\n")?;
                let (d, _) = l.accept()?;
                let mut d = match (&tls, protected) {
                    (Some(config), true) => FtpIo::secure(d, config)?,
                    _ => FtpIo::Plain(d),
                };
                if stall && cmd.eq_ignore_ascii_case("RETR") {
                    // Hold both connections open without a byte until the peer leaves.
                    let mut sink = [0u8; 1];
                    let _ = d.read(&mut sink);
                    return Ok(());
                }
                if cmd.eq_ignore_ascii_case("STOR") {
                    let mut buf = Vec::new();
                    match d.read_to_end(&mut buf) {
                        Ok(_) => {}
                        // A TLS peer that closed without close_notify: what came is all.
                        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
                        Err(e) => return Err(e),
                    }
                    files.lock().unwrap().insert(arg.to_string(), buf);
                } else {
                    let content = files.lock().unwrap().get(arg).cloned().unwrap_or_default();
                    d.write_all(&content)?;
                }
                d.finish();
                ctl.write_all(b"226 transfer complete\r\n")?;
            }
            "QUIT" => {
                ctl.write_all(b"221 bye\r\n")?;
                ctl.finish();
                return Ok(());
            }
            _ => ctl.write_all(b"502 not implemented\r\n")?,
        }
    }
}

/// An HTTP/1.1 upstream (keep-alive) that holds every request until the test opens its
/// gate, and counts the connections it accepted and the requests it holds: for checking
/// that waiting runs do not stall the node, and that outgoing connections are capped
/// and reused.
pub struct HoldingUpstream {
    pub url: String,
    state: Arc<(Mutex<HoldState>, std::sync::Condvar)>,
}

#[derive(Default)]
struct HoldState {
    open: bool,
    held: usize,
    served: usize,
    connections: usize,
    closed: usize,
}

impl HoldingUpstream {
    pub fn start() -> HoldingUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("upstream binds");
        let port = listener.local_addr().unwrap().port();
        let state: Arc<(Mutex<HoldState>, std::sync::Condvar)> = Arc::default();
        let s = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                s.0.lock().unwrap().connections += 1;
                let s = s.clone();
                std::thread::spawn(move || {
                    let _ = serve_held(conn, &s);
                    s.0.lock().unwrap().closed += 1;
                });
            }
        });
        HoldingUpstream {
            url: format!("http://127.0.0.1:{port}"),
            state,
        }
    }

    /// Requests held right now.
    pub fn held(&self) -> usize {
        self.state.0.lock().unwrap().held
    }

    pub fn served(&self) -> usize {
        self.state.0.lock().unwrap().served
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.0.lock().unwrap().connections
    }

    /// Connections the client has closed (or that failed) so far.
    pub fn closed(&self) -> usize {
        self.state.0.lock().unwrap().closed
    }

    /// Lets every held and later request through.
    pub fn release(&self) {
        self.state.0.lock().unwrap().open = true;
        self.state.1.notify_all();
    }
}

fn serve_held(
    conn: TcpStream,
    state: &(Mutex<HoldState>, std::sync::Condvar),
) -> std::io::Result<()> {
    let mut out = conn.try_clone()?;
    let mut reader = BufReader::new(conn);
    loop {
        let mut length = 0usize;
        let mut first = String::new();
        if reader.read_line(&mut first)? == 0 {
            return Ok(());
        }
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body)?;
        {
            let (lock, cv) = state;
            let mut s = lock.lock().unwrap();
            s.held += 1;
            while !s.open {
                s = cv.wait(s).unwrap();
            }
            s.held -= 1;
            s.served += 1;
        }
        let path = first.split(' ').nth(1).unwrap_or("").to_string();
        let reply = format!("upstream saw {path}");
        out.write_all(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n\r\n{reply}",
                reply.len()
            )
            .as_bytes(),
        )?;
    }
}
