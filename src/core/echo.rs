//! An echo server on the connection's own socket layers: the request head
//! reader, the extension's negotiation, the inflating reader under
//! tungstenite and the frame writer, exactly as a server connection has
//! them. It is the Autobahn TestSuite's fixture (`npm run autobahn`), so
//! the cases judge the code that serves clients. Unlike the server, it
//! echoes binary messages as binary, and compresses every message the
//! extension makes smaller.

use crate::core::deflate::{self, Deflate};
use crate::core::frame_writer::{Chunk, BINARY, COMPRESSED, TEXT};
use crate::core::http;
use crate::core::listener::{socket, Socket};
use crate::core::stats::Stats;
use crate::core::violation::Violation;
use futures_util::StreamExt;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::Message;

/// Serves echo connections on `listener` until the process ends.
pub async fn serve(listener: TcpListener, max_payload: usize) {
    let deflate = Arc::new(Deflate {
        threshold: 0,
        level: 6,
        stats: Arc::new(Stats::default()),
    });
    while let Ok((stream, _)) = listener.accept().await {
        let _ = stream.set_nodelay(true);
        crate::core::task::spawn(connection(stream, max_payload, deflate.clone()));
    }
}

async fn connection(mut stream: TcpStream, max: usize, deflate: Arc<Deflate>) {
    let Ok((head, bytes)) = http::read_head(&mut stream).await else {
        return;
    };
    if let Some(why) = head.upgrade_error() {
        http::respond(&mut stream, 400, "Bad Request", "text/plain", why).await;
        return;
    }
    let extension = deflate::negotiate(head.extensions.iter().map(String::as_str));
    let answer = head.switching_protocols(extension.as_deref());
    if stream.write_all(answer.as_bytes()).await.is_err() || stream.flush().await.is_err() {
        return;
    }
    let inflate = extension.is_some().then_some(max);
    let mut ws = socket(stream, bytes, head.len, inflate, max, deflate.stats.clone());
    let deflate = extension.is_some().then_some(&*deflate);
    loop {
        let (kind, payload) = match ws.next().await {
            Some(Ok(Message::Text(t))) => (TEXT, t.as_bytes().to_vec()),
            Some(Ok(Message::Binary(b))) => (BINARY, b.to_vec()),
            // Pongs and close replies go out with the next read or write.
            Some(Ok(_)) => {
                if ws.flush().await.is_err() {
                    return;
                }
                continue;
            }
            Some(Err(e)) => {
                if let Some(v) = Violation::of(&e) {
                    let frame = CloseFrame {
                        code: CloseCode::from(v.code()),
                        reason: v.reason().into(),
                    };
                    if ws.close(Some(frame)).await.is_ok() {
                        while let Some(Ok(_)) = ws.next().await {}
                    }
                }
                return;
            }
            None => return,
        };
        if echo(&mut ws, deflate, kind, &payload).await.is_err() {
            return;
        }
    }
}

/// Writes `payload` back as one frame, compressed when that pays.
async fn echo(
    ws: &mut Socket<TcpStream>,
    deflate: Option<&Deflate>,
    kind: u8,
    payload: &[u8],
) -> std::io::Result<()> {
    let compressed = deflate.and_then(|d| d.compress(payload));
    let chunk = match &compressed {
        Some(z) => Chunk::One {
            head: kind | COMPRESSED,
            payload: z,
        },
        None => Chunk::One {
            head: kind,
            payload,
        },
    };
    let out = ws.get_mut();
    while std::future::poll_fn(|cx| out.poll_write_frames(cx, std::iter::once(chunk))).await? == 0 {
    }
    std::future::poll_fn(|cx| out.poll_drain(cx)).await
}
