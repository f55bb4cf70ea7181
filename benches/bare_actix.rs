//! Baseline for the webhook benchmark: a bare actix-web 4 server with the same route
//! shape as the gateway's webhook (`ANY /api/token/v1/{token}`), which reads the body
//! and answers 200 with an empty body. `benches/run.sh` runs it next to the gateway.
//!
//! Usage: bare_actix <listen address> [workers]   (e.g. `bare_actix 127.0.0.1:18081 1`)

use actix_web::{App, HttpResponse, HttpServer, web};

async fn webhook(_token: web::Path<String>, body: web::Bytes) -> HttpResponse {
    std::hint::black_box(body.len());
    HttpResponse::Ok().finish()
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:18081".to_string());
    let workers: usize = match args.next() {
        Some(w) => w.parse().map_err(|e| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("workers: {e}"))
        })?,
        None => 1,
    };
    let mut server =
        HttpServer::new(|| App::new().route("/api/token/v1/{token}", web::route().to(webhook)))
            .max_connections(25_000);
    if workers > 0 {
        server = server.workers(workers);
    }
    server.bind(&listen)?.run().await
}
