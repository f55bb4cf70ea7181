//! Baseline for the websocket benchmark: a bare actix-web 4 websocket echo server
//! (actix-web-actors, like the gateway) on the same route shape as the gateway's public
//! channel websocket (`GET /ws/token/v1/{token}`). Each text message is sent back as is;
//! no heartbeat, no limits beyond actix-web's defaults. `benches/ws_run.sh` runs it next to
//! the gateway.
//!
//! Usage: bare_ws <listen address> [workers]   (e.g. `bare_ws 127.0.0.1:18091 1`)

use actix::{Actor, ActorContext, StreamHandler};
use actix_web::{App, Error, HttpRequest, HttpResponse, HttpServer, web};
use actix_web_actors::ws;

struct Echo;

impl Actor for Echo {
    type Context = ws::WebsocketContext<Self>;
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for Echo {
    fn handle(&mut self, msg: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        match msg {
            Ok(ws::Message::Text(text)) => ctx.text(text),
            Ok(ws::Message::Ping(payload)) => ctx.pong(&payload),
            Ok(ws::Message::Close(reason)) => {
                ctx.close(reason);
                ctx.stop();
            }
            Ok(_) => {}
            Err(_) => ctx.stop(),
        }
    }
}

async fn websocket(
    _token: web::Path<String>,
    req: HttpRequest,
    stream: web::Payload,
) -> Result<HttpResponse, Error> {
    ws::start(Echo, &req, stream)
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:18091".to_string());
    let workers: usize = match args.next() {
        Some(w) => w.parse().map_err(|e| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("workers: {e}"))
        })?,
        None => 1,
    };
    // Same connection cap as the gateway (`src/app.rs`); the accept backlog is actix's
    // default (2048) like the gateway's, so both see the same connect pacing.
    let mut server =
        HttpServer::new(|| App::new().route("/ws/token/v1/{token}", web::get().to(websocket)))
            .max_connections(25_000);
    if workers > 0 {
        server = server.workers(workers);
    }
    server.bind(&listen)?.run().await
}
