//! Baseline for the webhook benchmark: a bare actix-web 4 server with the same route
//! shape as the gateway's webhook (`ANY /api/token/v1/{token}`), which reads the body
//! and answers 200 with an empty body. `benches/run.sh` runs it next to the gateway.
//!
//! With a delay it is the slow upstream of `benches/forward_run.sh`: every path waits
//! that long (without holding a thread) and answers a small JSON body; with a
//! certificate and key it serves https.
//!
//! Usage: bare_actix <listen address> [workers] [delay_ms] [cert.pem key.pem]
//!   (e.g. `bare_actix 127.0.0.1:18081 1`, `bare_actix 127.0.0.1:18090 1 50`)

use std::time::Duration;

use actix_web::{App, HttpResponse, HttpServer, web};

async fn webhook(_token: web::Path<String>, body: web::Bytes) -> HttpResponse {
    std::hint::black_box(body.len());
    HttpResponse::Ok().finish()
}

async fn slow(delay: web::Data<Duration>, body: web::Bytes) -> HttpResponse {
    std::hint::black_box(body.len());
    actix_web::rt::time::sleep(**delay).await;
    HttpResponse::Ok()
        .content_type("application/json")
        .body(r#"{"customer":"c-42","status":"active","credit":1200}"#)
}

fn invalid(what: &str, e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{what}: {e}"))
}

fn tls_config(cert: &str, key: &str) -> std::io::Result<rustls::ServerConfig> {
    use rustls_pki_types::pem::PemObject;
    let certs = rustls_pki_types::CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| invalid("certificate", e))?;
    let key = rustls_pki_types::PrivateKeyDer::from_pem_file(key).map_err(|e| invalid("key", e))?;
    rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| invalid("tls", e))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| invalid("tls", e))
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:18081".to_string());
    let workers: usize = match args.next() {
        Some(w) => w.parse().map_err(|e| invalid("workers", e))?,
        None => 1,
    };
    let delay: Option<Duration> = match args.next() {
        Some(d) => Some(Duration::from_millis(
            d.parse().map_err(|e| invalid("delay_ms", e))?,
        )),
        None => None,
    };
    let tls = match (args.next(), args.next()) {
        (Some(cert), Some(key)) => Some(tls_config(&cert, &key)?),
        _ => None,
    };
    let mut server = HttpServer::new(move || {
        let app = App::new();
        match delay {
            Some(d) => app
                .app_data(web::Data::new(d))
                .default_service(web::to(slow)),
            None => app.route("/api/token/v1/{token}", web::route().to(webhook)),
        }
    })
    .max_connections(25_000)
    .backlog(4096);
    if workers > 0 {
        server = server.workers(workers);
    }
    match tls {
        Some(tls) => server.bind_rustls_0_23(&listen, tls)?.run().await,
        None => server.bind(&listen)?.run().await,
    }
}
