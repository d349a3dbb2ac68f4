//! One connection the runner drives: a client it plays against a server, or
//! a client under test that connected to the runner playing a server.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use convene_protocol::frame::length_prefix;
use convene_protocol::{MediaFrame, StreamDecoder};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use prost_reflect::{DynamicMessage, Kind, MessageDescriptor, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Mutex, mpsc};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

/// What arrived on a connection.
#[derive(Debug, Clone)]
pub enum Received {
    /// A control message (the envelope of the other side).
    Control(DynamicMessage),
    /// A media frame.
    Media(MediaFrame),
    /// A frame that did not decode, with the reason.
    Garbage(String),
}

#[derive(Debug)]
enum Event {
    Frame(Bytes),
    Closed(Option<u16>),
}

type Sink = Arc<Mutex<Box<dyn SinkLike>>>;

/// The sending half of a WebSocket, whatever the stream under it.
pub trait SinkLike: Send {
    /// Sends one message.
    fn send_msg(&mut self, m: Message) -> futures_util::future::BoxFuture<'_, Result<(), String>>;
    /// Queues one message without flushing.
    fn feed_msg(&mut self, m: Message) -> futures_util::future::BoxFuture<'_, Result<(), String>>;
    /// Flushes queued messages.
    fn flush_all(&mut self) -> futures_util::future::BoxFuture<'_, Result<(), String>>;
    /// Sends only the transport's header of a frame of `length` bytes.
    fn send_prefix(
        &mut self,
        length: u32,
    ) -> futures_util::future::BoxFuture<'_, Result<(), String>>;
}

/// Bytes to write to a connection ahead of what the WebSocket layer writes:
/// how the runner sends a frame header that no WebSocket library would.
pub type Injected = Arc<std::sync::Mutex<Vec<u8>>>;

/// A stream whose writes are preceded by whatever was [`Injected`].
pub struct Injectable<S> {
    inner: S,
    injected: Injected,
}

impl<S> Injectable<S> {
    /// Wraps `inner`; returns the wrapper and the handle to inject through.
    pub fn new(inner: S) -> (Self, Injected) {
        let injected: Injected = Arc::default();
        (
            Injectable {
                inner,
                injected: injected.clone(),
            },
            injected,
        )
    }
}

impl<S: AsyncWrite + Unpin> Injectable<S> {
    /// Writes out what was injected; Ready once none is left.
    fn poll_injected(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        loop {
            let pending =
                std::mem::take(&mut *self.injected.lock().unwrap_or_else(|p| p.into_inner()));
            if pending.is_empty() {
                return Poll::Ready(Ok(()));
            }
            match std::pin::Pin::new(&mut self.inner).poll_write(cx, &pending) {
                Poll::Ready(Ok(n)) => {
                    if n < pending.len() {
                        let mut q = self.injected.lock().unwrap_or_else(|p| p.into_inner());
                        let rest = [&pending[n..], &q[..]].concat();
                        *q = rest;
                    }
                }
                other => {
                    let mut q = self.injected.lock().unwrap_or_else(|p| p.into_inner());
                    let rest = [&pending[..], &q[..]].concat();
                    *q = rest;
                    return other.map(|r| r.map(|_| ()));
                }
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Injectable<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Injectable<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::task::ready!(self.poll_injected(cx))?;
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::ready!(self.poll_injected(cx))?;
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The sending half of a WebSocket, and where to inject raw bytes, if the
/// runner made the connection.
struct WsSink<S> {
    sink: SplitSink<WebSocketStream<S>, Message>,
    injected: Option<Injected>,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> SinkLike for WsSink<S> {
    fn send_msg(&mut self, m: Message) -> futures_util::future::BoxFuture<'_, Result<(), String>> {
        Box::pin(async move { self.sink.send(m).await.map_err(|e| e.to_string()) })
    }
    fn feed_msg(&mut self, m: Message) -> futures_util::future::BoxFuture<'_, Result<(), String>> {
        Box::pin(async move { self.sink.feed(m).await.map_err(|e| e.to_string()) })
    }
    fn flush_all(&mut self) -> futures_util::future::BoxFuture<'_, Result<(), String>> {
        Box::pin(async move { self.sink.flush().await.map_err(|e| e.to_string()) })
    }
    fn send_prefix(
        &mut self,
        length: u32,
    ) -> futures_util::future::BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let injected = self
                .injected
                .as_ref()
                .ok_or("this connection cannot send a bare frame header")?;
            // FIN, binary; masked (a client's frames are), 64-bit length, zero mask.
            let mut header = vec![0x82, 0x80 | 127];
            header.extend_from_slice(&u64::from(length).to_be_bytes());
            header.extend_from_slice(&[0; 4]);
            injected
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(&header);
            // A flush makes the stream write what was injected.
            self.sink.flush().await.map_err(|e| e.to_string())
        })
    }
}

/// A connection with its received-but-unconsumed messages.
pub struct Actor {
    sink: Sink,
    events: mpsc::UnboundedReceiver<Event>,
    /// The envelope the other side sends.
    incoming: MessageDescriptor,
    /// Control messages received and not yet consumed by an expectation.
    pub control: VecDeque<DynamicMessage>,
    /// Media frames received and not yet consumed.
    pub media: VecDeque<MediaFrame>,
    /// Frames that did not decode.
    pub garbage: Vec<String>,
    /// `Some(code)` once the connection closed (the WebSocket close code, if any).
    pub closed: Option<Option<u16>>,
    /// When set, the actor stops answering Pings.
    silenced: Arc<AtomicBool>,
}

impl Actor {
    /// Wraps an open WebSocket. Pings from the other side are answered
    /// automatically (with `pong_env`, the envelope this side sends) unless
    /// the actor is silenced.
    pub fn new<S>(
        ws: WebSocketStream<S>,
        incoming: MessageDescriptor,
        pong_env: MessageDescriptor,
    ) -> Self
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        Actor::with_injection(ws, None, incoming, pong_env)
    }

    /// [`Actor::new`] for a connection whose stream is [`Injectable`], so
    /// that `send_prefix` can write a bare frame header.
    pub fn with_injection<S>(
        ws: WebSocketStream<S>,
        injected: Option<Injected>,
        incoming: MessageDescriptor,
        pong_env: MessageDescriptor,
    ) -> Self
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sink, stream): (
            SplitSink<WebSocketStream<S>, Message>,
            SplitStream<WebSocketStream<S>>,
        ) = ws.split();
        let sink: Sink = Arc::new(Mutex::new(Box::new(WsSink { sink, injected })));
        let (tx, rx) = mpsc::unbounded_channel();
        let silenced = Arc::new(AtomicBool::new(false));
        tokio::spawn(read_loop(
            stream,
            tx,
            sink.clone(),
            silenced.clone(),
            incoming.clone(),
            pong_env,
        ));
        Actor {
            sink,
            events: rx,
            incoming,
            control: VecDeque::new(),
            media: VecDeque::new(),
            garbage: Vec::new(),
            closed: None,
            silenced,
        }
    }

    /// Stops all sending, Pong included.
    pub fn silence(&self) {
        self.silenced.store(true, Ordering::Relaxed);
    }

    /// Sends one frame as one binary message.
    pub async fn send(&self, frame: Bytes) -> Result<(), String> {
        self.sink
            .lock()
            .await
            .send_msg(Message::Binary(frame))
            .await
    }

    /// Sends many frames with one flush.
    pub async fn send_many(&self, frames: impl IntoIterator<Item = Bytes>) -> Result<(), String> {
        let mut s = self.sink.lock().await;
        for f in frames {
            s.feed_msg(Message::Binary(f)).await?;
        }
        s.flush_all().await
    }

    /// Sends only the transport's header of a frame of `length` bytes.
    pub async fn send_prefix(&self, length: u32) -> Result<(), String> {
        self.sink.lock().await.send_prefix(length).await
    }

    /// Sends a WebSocket text message.
    pub async fn send_text(&self, text: &str) -> Result<(), String> {
        self.sink
            .lock()
            .await
            .send_msg(Message::Text(text.to_string().into()))
            .await
    }

    /// Waits for the next event until `deadline`; false on timeout or when closed.
    pub async fn pump(&mut self, deadline: Instant) -> bool {
        if self.closed.is_some() && self.events.is_empty() {
            return false;
        }
        match tokio::time::timeout_at(deadline, self.events.recv()).await {
            Ok(Some(Event::Frame(f))) => {
                match decode(&self.incoming, f) {
                    Received::Control(m) => self.control.push_back(m),
                    Received::Media(m) => self.media.push_back(m),
                    Received::Garbage(g) => self.garbage.push(g),
                }
                true
            }
            Ok(Some(Event::Closed(code))) => {
                self.closed = Some(code);
                true
            }
            Ok(None) => {
                self.closed.get_or_insert(None);
                false
            }
            Err(_) => false,
        }
    }

    /// Takes everything already delivered, without waiting.
    pub async fn pump_ready(&mut self) {
        while let Ok(ev) = self.events.try_recv() {
            match ev {
                Event::Frame(f) => match decode(&self.incoming, f) {
                    Received::Control(m) => self.control.push_back(m),
                    Received::Media(m) => self.media.push_back(m),
                    Received::Garbage(g) => self.garbage.push(g),
                },
                Event::Closed(code) => self.closed = Some(code),
            }
        }
    }
}

fn decode(env: &MessageDescriptor, f: Bytes) -> Received {
    match f.first() {
        Some(0x01) => match DynamicMessage::decode(env.clone(), &f[1..]) {
            Ok(m) => Received::Control(m),
            Err(e) => Received::Garbage(format!("control frame does not decode: {e}")),
        },
        Some(0x02) => match MediaFrame::parse(f) {
            Ok(m) => Received::Media(m),
            Err(e) => Received::Garbage(e.to_string()),
        },
        // Only a session that offered sfu.1 is sent LAYERED frames (§6.6).
        Some(0x80) => match MediaFrame::parse_layered(f) {
            Ok(m) => Received::Media(m),
            Err(e) => Received::Garbage(e.to_string()),
        },
        other => Received::Garbage(format!("frame type {other:?}")),
    }
}

async fn read_loop<S>(
    mut stream: SplitStream<WebSocketStream<S>>,
    tx: mpsc::UnboundedSender<Event>,
    sink: Sink,
    silenced: Arc<AtomicBool>,
    incoming: MessageDescriptor,
    pong_env: MessageDescriptor,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    while let Some(msg) = stream.next().await {
        match msg {
            Ok(Message::Binary(b)) => {
                if !silenced.load(Ordering::Relaxed)
                    && let Some(pong) = pong_for(&incoming, &pong_env, &b)
                {
                    let _ = sink.lock().await.send_msg(Message::Binary(pong)).await;
                }
                if tx.send(Event::Frame(b)).is_err() {
                    return;
                }
            }
            Ok(Message::Close(frame)) => {
                let _ = tx.send(Event::Closed(frame.map(|f| f.code.into())));
                return;
            }
            Ok(_) => {}
            Err(_) => {
                let _ = tx.send(Event::Closed(None));
                return;
            }
        }
    }
    let _ = tx.send(Event::Closed(None));
}

/// The Pong that answers `frame`, if it is a Ping.
fn pong_for(
    incoming: &MessageDescriptor,
    pong_env: &MessageDescriptor,
    frame: &[u8],
) -> Option<Bytes> {
    if frame.first() != Some(&0x01) {
        return None;
    }
    let m = DynamicMessage::decode(incoming.clone(), &frame[1..]).ok()?;
    let ping_fd = incoming.get_field_by_name("ping")?;
    if !m.has_field(&ping_fd) {
        return None;
    }
    let Value::Message(ping) = m.get_field(&ping_fd).into_owned() else {
        return None;
    };
    let ts = ping
        .get_field_by_name("timestamp_us")
        .map(|v| v.into_owned())
        .unwrap_or(Value::U64(0));
    let pong_fd = pong_env.get_field_by_name("pong")?;
    let Kind::Message(pong_desc) = pong_fd.kind() else {
        return None;
    };
    let mut pong = DynamicMessage::new(pong_desc);
    pong.set_field_by_name("timestamp_us", ts);
    let mut env = DynamicMessage::new(pong_env.clone());
    env.set_field(&pong_fd, Value::Message(pong));
    let mut out = vec![0x01];
    env.encode(&mut out).ok()?;
    Some(out.into())
}

/// A generous deadline from now.
pub fn deadline(d: Duration) -> Instant {
    Instant::now() + d
}

/// The sending half of a WebTransport session, in the mapping of
/// PROTOCOL.md §3.3: control frames length-prefixed on the bidirectional
/// control stream, each media frame on a unidirectional stream of its own.
struct WtSink {
    session: web_transport_quinn::Session,
    control: web_transport_quinn::SendStream,
}

impl WtSink {
    async fn send_frame(&mut self, m: Message) -> Result<(), String> {
        match m {
            Message::Binary(f) if convene_protocol::frame::is_media_frame(&f) => {
                let mut s = self.session.open_uni().await.map_err(|e| e.to_string())?;
                // A server may stop a media stream whose frame it will not
                // take (too large, over its budget; PROTOCOL.md §3.3): the
                // frame is lost, not the session. What the server makes of
                // it is for the case's expectations to check.
                if s.write_all(&f).await.is_ok() {
                    let _ = s.finish();
                }
                Ok(())
            }
            Message::Binary(f) => {
                self.control
                    .write_all(&length_prefix(f.len()))
                    .await
                    .map_err(|e| e.to_string())?;
                self.control.write_all(&f).await.map_err(|e| e.to_string())
            }
            Message::Text(_) => Err("a text message has no WebTransport equivalent".into()),
            Message::Close(_) => {
                self.session.close(0, b"");
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

impl SinkLike for WtSink {
    fn send_msg(&mut self, m: Message) -> futures_util::future::BoxFuture<'_, Result<(), String>> {
        Box::pin(self.send_frame(m))
    }
    fn feed_msg(&mut self, m: Message) -> futures_util::future::BoxFuture<'_, Result<(), String>> {
        Box::pin(self.send_frame(m))
    }
    fn flush_all(&mut self) -> futures_util::future::BoxFuture<'_, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
    fn send_prefix(
        &mut self,
        length: u32,
    ) -> futures_util::future::BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            self.control
                .write_all(&length_prefix(length as usize))
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// Largest frame the runner accepts from a server over WebTransport.
const MAX_WT_FRAME: usize = 4 << 20;

impl Actor {
    /// Wraps a WebTransport session whose control stream is open. Pings are
    /// answered as on WebSocket; the close code reported is the WebSocket
    /// equivalent (`4000 + code`, or 1000), so cases read the same.
    pub fn webtransport(
        session: web_transport_quinn::Session,
        control_send: web_transport_quinn::SendStream,
        mut control_recv: web_transport_quinn::RecvStream,
        incoming: MessageDescriptor,
        pong_env: MessageDescriptor,
    ) -> Self {
        let sink: Sink = Arc::new(Mutex::new(Box::new(WtSink {
            session: session.clone(),
            control: control_send,
        })));
        let (tx, rx) = mpsc::unbounded_channel();
        let silenced = Arc::new(AtomicBool::new(false));
        {
            let (tx, sink, silenced, incoming) =
                (tx.clone(), sink.clone(), silenced.clone(), incoming.clone());
            tokio::spawn(async move {
                let mut decoder = StreamDecoder::new(MAX_WT_FRAME);
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(Some(n)) = control_recv.read(&mut buf).await {
                    decoder.push(&buf[..n]);
                    while let Ok(Some(f)) = decoder.next_frame() {
                        if !silenced.load(Ordering::Relaxed)
                            && let Some(pong) = pong_for(&incoming, &pong_env, &f)
                        {
                            let _ = sink.lock().await.send_msg(Message::Binary(pong)).await;
                        }
                        if tx.send(Event::Frame(f)).is_err() {
                            return;
                        }
                    }
                }
            });
        }
        {
            let (session, tx) = (session.clone(), tx.clone());
            tokio::spawn(async move {
                while let Ok(d) = session.read_datagram().await {
                    if tx.send(Event::Frame(d)).is_err() {
                        return;
                    }
                }
            });
        }
        {
            let (session, tx) = (session.clone(), tx.clone());
            tokio::spawn(async move {
                while let Ok(mut s) = session.accept_uni().await {
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        if let Ok(b) = s.read_to_end(MAX_WT_FRAME).await {
                            let _ = tx.send(Event::Frame(Bytes::from(b)));
                        }
                    });
                }
            });
        }
        tokio::spawn(async move {
            let code = match session.closed().await {
                web_transport_quinn::SessionError::WebTransportError(
                    web_transport_quinn::WebTransportError::Closed(code, _),
                ) if code != 0 => Some(4000 + code.min(999) as u16),
                _ => Some(1000),
            };
            let _ = tx.send(Event::Closed(code));
        });
        Actor {
            sink,
            events: rx,
            incoming,
            control: VecDeque::new(),
            media: VecDeque::new(),
            garbage: Vec::new(),
            closed: None,
            silenced,
        }
    }
}
