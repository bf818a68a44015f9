//! Yamux, the stream multiplexer on TCP and relayed connections, sending frames of up to
//! 256 KiB instead of 16 KiB.
//!
//! libp2p-yamux wraps yamux 0.13 without a way to set how large a frame a stream's write is
//! cut into (`split_send_size`, 16 KiB by default, chosen against head-of-line blocking between
//! many small streams on slow links). dustfs's traffic is shards of up to a few MiB between
//! peers that mostly share nothing else, and every frame costs both ends a header, a flush,
//! a wakeup and a pass through the whole stream stack (yamux, TLS, the socket): 65,536 frames
//! per GiB. With TLS under it, a 16 KiB frame also needs two records, its 16 KiB body and the
//! 12 bytes left over with the header. The receiving side of yamux takes frames of up to its
//! stream's window (256 KiB at the start) and 1 MiB, so any yamux peer reads these frames.
//!
//! Measured on a 2-core VM, `PERF=0 scripts/profile.sh write 512`: one build with the frame
//! size from an environment variable, 5 alternated pairs: 16 KiB 136.7-145.7 MiB/s and
//! 12.80-13.46 CPU s/GiB, 256 KiB 160.8-196.8 MiB/s and 9.78-11.98 CPU s/GiB, faster in 5 of
//! 5, the suppliers' share 5.5-6.1 against 3.9-5.2 CPU s/GiB. This module against the build
//! before, 3 alternated pairs on a busier host: 130.1-149.3 against 152.1-160.5 MiB/s,
//! 12.72-14.70 against 12.04-12.68 CPU s/GiB. Cold reads gain little (`read 512`, 5 pairs:
//! medians 337.6 against 343.7 MiB/s, 5.36 against 5.12 CPU s/GiB); 1 MiB frames read no
//! faster than 256 KiB ones.
//!
//! [`Muxer`] is libp2p-yamux's own (MIT, Parity Technologies), for yamux 0.13 alone.

use std::collections::VecDeque;
use std::io;
use std::iter;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use futures::{AsyncRead, AsyncWrite, future, ready};
use libp2p::core::muxing::{StreamMuxer, StreamMuxerEvent};
use libp2p::core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade, UpgradeInfo};

/// The largest frame a stream's write is sent as.
pub const FRAME: usize = 256 << 10;

/// The protocol name yamux is negotiated under (libp2p's).
const PROTOCOL: &str = "/yamux/1.0.0";

/// Inbound streams kept while nobody takes them (yamux's own ACK backlog); more are dropped.
const MAX_BUFFERED_INBOUND_STREAMS: usize = 256;

/// The upgrade that puts yamux on a connection; `Config::new` goes where libp2p's builder
/// takes `yamux::Config::default`.
#[derive(Debug, Clone)]
pub struct Config(yamux::Config);

impl Config {
    /// yamux's defaults with [`FRAME`]-sized frames, and no reading from a stream after the
    /// other side closed it (as libp2p-yamux sets it).
    pub fn new() -> Self {
        let mut c = yamux::Config::default();
        c.set_read_after_close(false);
        c.set_split_send_size(FRAME);
        Self(c)
    }

    /// yamux on `io`, this end in `mode` (the dialer is the client).
    fn start<C: AsyncRead + AsyncWrite + Unpin>(
        self,
        io: C,
        mode: yamux::Mode,
    ) -> future::Ready<io::Result<Muxer<C>>> {
        future::ready(Ok(Muxer::new(yamux::Connection::new(io, self.0, mode))))
    }
}

impl Default for Config {
    fn default() -> Self {
        Self::new()
    }
}

impl UpgradeInfo for Config {
    type Info = &'static str;
    type InfoIter = iter::Once<Self::Info>;

    fn protocol_info(&self) -> Self::InfoIter {
        iter::once(PROTOCOL)
    }
}

impl<C> InboundConnectionUpgrade<C> for Config
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = Muxer<C>;
    type Error = io::Error;
    type Future = future::Ready<Result<Self::Output, Self::Error>>;

    fn upgrade_inbound(self, io: C, _: Self::Info) -> Self::Future {
        self.start(io, yamux::Mode::Server)
    }
}

impl<C> OutboundConnectionUpgrade<C> for Config
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = Muxer<C>;
    type Error = io::Error;
    type Future = future::Ready<Result<Self::Output, Self::Error>>;

    fn upgrade_outbound(self, io: C, _: Self::Info) -> Self::Future {
        self.start(io, yamux::Mode::Client)
    }
}

/// A yamux connection as libp2p's [`StreamMuxer`].
#[derive(Debug)]
pub struct Muxer<C> {
    connection: yamux::Connection<C>,
    /// Inbound streams that arrived while [`StreamMuxer::poll`] drove the connection, until
    /// [`StreamMuxer::poll_inbound`] takes them: yamux makes progress only through
    /// `poll_next_inbound`, which may yield a stream at any time.
    inbound: VecDeque<yamux::Stream>,
    inbound_waker: Option<Waker>,
}

impl<C> Muxer<C> {
    fn new(connection: yamux::Connection<C>) -> Self {
        Self {
            connection,
            inbound: VecDeque::new(),
            inbound_waker: None,
        }
    }
}

impl<C: AsyncRead + AsyncWrite + Unpin> Muxer<C> {
    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<yamux::Stream, yamux::ConnectionError>> {
        match ready!(self.connection.poll_next_inbound(cx)) {
            Some(r) => Poll::Ready(r),
            None => Poll::Ready(Err(yamux::ConnectionError::Closed)),
        }
    }
}

impl<C: AsyncRead + AsyncWrite + Unpin> StreamMuxer for Muxer<C> {
    type Substream = yamux::Stream;
    type Error = yamux::ConnectionError;

    fn poll_inbound(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        let this = self.get_mut();
        if let Some(s) = this.inbound.pop_front() {
            return Poll::Ready(Ok(s));
        }
        if let Poll::Ready(r) = this.poll_next(cx) {
            return Poll::Ready(r);
        }
        this.inbound_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    fn poll_outbound(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        self.get_mut().connection.poll_new_outbound(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.get_mut().connection.poll_close(cx)
    }

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<StreamMuxerEvent, Self::Error>> {
        let this = self.get_mut();
        let stream = ready!(this.poll_next(cx))?;
        if this.inbound.len() >= MAX_BUFFERED_INBOUND_STREAMS {
            tracing::warn!(%stream, "dropping an inbound stream: too many wait to be taken");
            drop(stream);
        } else {
            this.inbound.push_back(stream);
            if let Some(w) = this.inbound_waker.take() {
                w.wake();
            }
        }
        // Called again at once, so the connection keeps making progress.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures::future::poll_fn;
    use futures::{AsyncReadExt, AsyncWriteExt};
    use libp2p::core::muxing::StreamMuxerExt;
    use libp2p::tcp::tokio::TcpStream;

    use super::*;

    /// A socket that remembers the longest write it was asked to take.
    struct Longest<S> {
        inner: S,
        longest: Arc<AtomicUsize>,
    }

    impl<S: AsyncRead + Unpin> AsyncRead for Longest<S> {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            out: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.get_mut().inner).poll_read(cx, out)
        }
    }

    impl<S: AsyncWrite + Unpin> AsyncWrite for Longest<S> {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            this.longest.fetch_max(data.len(), Ordering::Relaxed);
            Pin::new(&mut this.inner).poll_write(cx, data)
        }
        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().inner).poll_flush(cx)
        }
        fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().inner).poll_close(cx)
        }
    }

    /// A shard's worth of bytes on one stream arrives whole and in order, sent in frames
    /// larger than yamux's default 16 KiB.
    #[tokio::test]
    async fn a_shard_crosses_a_stream_unchanged_in_frames_over_16_kib() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (a, b) = tokio::join!(l.accept(), tokio::net::TcpStream::connect(addr));
        let longest = Arc::new(AtomicUsize::new(0));
        let client_io = Longest {
            inner: TcpStream(b.unwrap()),
            longest: longest.clone(),
        };
        let server_io = TcpStream(a.unwrap().0);
        let mut client = Config::new()
            .upgrade_outbound(client_io, PROTOCOL)
            .await
            .unwrap();
        let mut server = Config::new()
            .upgrade_inbound(server_io, PROTOCOL)
            .await
            .unwrap();
        let data: Vec<u8> = (0..(3u32 << 20) + 4_321)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        let receiver = tokio::spawn(async move {
            let mut s = poll_fn(|cx| server.poll_inbound_unpin(cx)).await.unwrap();
            let drive = tokio::spawn(async move { poll_fn(|cx| server.poll_unpin(cx)).await });
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            drive.abort();
            got
        });
        let mut s = poll_fn(|cx| client.poll_outbound_unpin(cx)).await.unwrap();
        let drive = tokio::spawn(async move { poll_fn(|cx| client.poll_unpin(cx)).await });
        // A muxer that stops moving bytes fails here instead of hanging the suite.
        let got = tokio::time::timeout(std::time::Duration::from_secs(60), async {
            s.write_all(&data).await.unwrap();
            s.close().await.unwrap();
            receiver.await.unwrap()
        })
        .await
        .expect("3 MiB did not cross the stream within 60 s");
        drive.abort();
        assert_eq!(got.len(), data.len());
        assert!(got == data, "the bytes changed on the way");
        let longest = longest.load(Ordering::Relaxed);
        assert!(
            longest > 16 << 10,
            "no frame longer than 16 KiB was sent (longest write {longest} bytes)"
        );
    }
}
