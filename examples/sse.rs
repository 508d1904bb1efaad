//! The same hub over Server-Sent Events instead of WebSockets: what
//! "transport-agnostic" buys. `GET /events` streams every broadcast as an
//! SSE `data:` line; `POST /send` broadcasts its body to every listener.
//!
//! Run it: `cargo run --example sse`, then:
//!
//! ```text
//! curl -N http://127.0.0.1:8000/events            # in one terminal
//! curl -d 'hello' http://127.0.0.1:8000/send      # in another: the first prints "data: hello"
//! ```

use std::convert::Infallible;

use futures_util::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody};
use hub::{Event, Hub, Message};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

/// Largest accepted `POST /send` body.
const MAX_POST: usize = 64 << 10;

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(Full::from(body).boxed_unsync());
    *response.status_mut() = status;
    response
}

/// One SSE event per text message, with its offset as the event id (which
/// `EventSource` sends back as `Last-Event-ID` when it reconnects); a gap is
/// announced as a `resync` event.
fn sse_event(event: Event) -> Option<Bytes> {
    match event {
        Event::Broadcast(broadcast) => {
            let Message::Text(text) = broadcast.message() else {
                return None;
            };
            let mut frame = format!("id: {}\n", broadcast.offset());
            for line in text.lines() {
                frame.push_str(&format!("data: {line}\n"));
            }
            Some(Bytes::from(frame + "\n"))
        }
        Event::Resync { missed, .. } => {
            let missed = missed.map_or("unknown".to_owned(), |n| n.to_string());
            Some(Bytes::from(format!("event: resync\ndata: {missed}\n\n")))
        }
        _ => None,
    }
}

async fn route(hub: Hub, request: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    Ok(match (request.method(), request.uri().path()) {
        (&Method::GET, "/events") => match hub.connect() {
            Ok(connection) => {
                // Each delivery becomes a body frame; when the client goes,
                // hyper drops the body and with it the hub connection.
                let events = connection
                    .into_stream()
                    .filter_map(|event| async move { sse_event(event.ok()?) })
                    .map(|bytes| Ok(Frame::data(bytes)));
                let mut response = Response::new(BodyExt::boxed_unsync(StreamBody::new(events)));
                let headers = response.headers_mut();
                headers.insert(
                    CONTENT_TYPE,
                    "text/event-stream"
                        .parse()
                        .unwrap_or_else(|_| unreachable!()),
                );
                headers.insert(
                    CACHE_CONTROL,
                    "no-cache".parse().unwrap_or_else(|_| unreachable!()),
                );
                response
            }
            Err(error) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{error}\n")),
        },
        (&Method::POST, "/send") => {
            let body = http_body_util::Limited::new(request.into_body(), MAX_POST);
            match body
                .collect()
                .await
                .map(|b| String::from_utf8(b.to_bytes().to_vec()))
            {
                Ok(Ok(message)) => {
                    let reached = hub.broadcast(message);
                    text(StatusCode::OK, format!("sent to {reached} listeners\n"))
                }
                Ok(Err(_)) => text(StatusCode::BAD_REQUEST, "send UTF-8 text\n".into()),
                Err(_) => text(StatusCode::PAYLOAD_TOO_LARGE, "at most 64 KiB\n".into()),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    })
}

/// Serves `/events` and `/send` for every connection `listener` accepts.
pub(crate) async fn serve(listener: TcpListener) {
    let hub = Hub::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let hub = hub.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| route(hub.clone(), request));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:8000").await?;
    println!(
        "SSE on http://{}/events, POST to /send",
        listener.local_addr()?
    );
    serve(listener).await;
    Ok(())
}
