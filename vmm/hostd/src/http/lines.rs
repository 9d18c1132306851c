//! A streamed answer of JSON lines (migration and drain progress), fed by a channel.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Bytes;
use http_body::Frame;

/// One JSON value per line, as they arrive, until every sender is dropped.
pub struct JsonLines(pub tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>);

impl http_body::Body for JsonLines {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|line| {
            line.map(|value| {
                let mut text = value.to_string();
                text.push('\n');
                Ok(Frame::data(Bytes::from(text)))
            })
        })
    }
}
