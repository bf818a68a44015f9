//! TLS 1.3 for libp2p connections over TCP, with AES-GCM preferred to ChaCha20-Poly1305.
//!
//! The handshake is libp2p's TLS handshake (<https://github.com/libp2p/specs/blob/master/tls/tls.md>,
//! protocol `/tls/1.0.0`): each side presents one self-signed certificate carrying its host
//! key's signature over the certificate key, and its peer id is the host key's. The certificate
//! itself (making it, parsing it, checking its self-signature, its validity period and the
//! host key's signature in it, and the handshake signature made with its key) is
//! `libp2p_tls::certificate`'s public code; this module only builds the rustls configurations
//! and the connection upgrade around it, which `libp2p_tls::Config` keeps private.
//!
//! Why not `libp2p_tls::Config`: it lists ChaCha20-Poly1305 first, and since both ends offer
//! the same list, every connection uses it. On CPUs with AES instructions (VAES here) ring's
//! AES-GCM costs a fraction of its ChaCha20-Poly1305, and the transport's cipher was the
//! largest single cost of moving shards: in a cold 512 MiB read Noise's ChaCha20-Poly1305 was
//! 14.9% of all CPU samples (suppliers sealing 7.8%, the mount opening 7.2%), in a 512 MiB copy
//! 11.6% (`CALLGRAPH=dwarf scripts/profile.sh`, 2026-12-07). The measurements are in
//! `docs/DESIGN.md`. A peer that only speaks Noise is still reached over Noise
//! (`host.rs` offers both, TLS first), and a peer that lists ChaCha20-Poly1305 first gets it:
//! the client's order decides.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use futures::future::BoxFuture;
use futures::io::BufReader;
use futures::{AsyncRead, AsyncWrite, FutureExt};
use futures_rustls::TlsStream;
use libp2p::core::UpgradeInfo;
use libp2p::core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade};
use libp2p::{PeerId, identity};
use libp2p_tls::certificate;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::ring::cipher_suite::{
    TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, CommonState, DigitallySignedStruct, DistinguishedName, SignatureScheme,
    SupportedCipherSuite,
};

/// TLS 1.3 suites, AES-GCM first (ring picks its AES-NI/VAES code at run time; on a CPU
/// without AES instructions a peer that puts ChaCha20-Poly1305 first still gets it, since
/// the client's order decides).
static SUITES: &[SupportedCipherSuite] = &[
    TLS13_AES_128_GCM_SHA256,
    TLS13_AES_256_GCM_SHA384,
    TLS13_CHACHA20_POLY1305_SHA256,
];

/// libp2p's protocol name for TLS 1.3, the ALPN it negotiates.
const PROTOCOL: &str = "/tls/1.0.0";
const ALPN: &[u8] = b"libp2p";

/// Errors of the TLS upgrade.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate could not be made.
    #[error("making the TLS certificate: {0}")]
    Certificate(String),
    /// The handshake failed (as server).
    #[error("TLS handshake (inbound): {0}")]
    Inbound(std::io::Error),
    /// The handshake failed (as client).
    #[error("TLS handshake (outbound): {0}")]
    Outbound(std::io::Error),
    /// The peer's certificate is not a valid libp2p certificate.
    #[error("peer certificate: {0}")]
    BadCertificate(String),
}

/// The connection upgrade: a server and a client configuration made from the host key.
#[derive(Clone)]
pub struct Config {
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
}

impl Config {
    /// Makes a certificate for `key` and the two configurations that present it.
    pub fn new(key: &identity::Keypair) -> Result<Self, TlsError> {
        let (cert, private) =
            certificate::generate(key).map_err(|e| TlsError::Certificate(e.to_string()))?;
        Self::presenting(cert, &private)
    }

    /// The two configurations, presenting `cert` (with `private`, its key).
    fn presenting(
        cert: CertificateDer<'static>,
        private: &PrivateKeyDer<'_>,
    ) -> Result<Self, TlsError> {
        let resolver = Arc::new(OneCert::new(cert, private)?);
        let provider = Arc::new(rustls::crypto::CryptoProvider {
            cipher_suites: SUITES.to_vec(),
            ..rustls::crypto::ring::default_provider()
        });
        let verifier = Arc::new(Verifier);
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Certificate(e.to_string()))?
            .with_client_cert_verifier(verifier.clone())
            .with_cert_resolver(resolver.clone());
        server.alpn_protocols = vec![ALPN.to_vec()];
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Certificate(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(resolver);
        client.alpn_protocols = vec![ALPN.to_vec()];
        Ok(Self {
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }
}

impl UpgradeInfo for Config {
    type Info = &'static str;
    type InfoIter = std::iter::Once<Self::Info>;

    fn protocol_info(&self) -> Self::InfoIter {
        std::iter::once(PROTOCOL)
    }
}

impl<C> InboundConnectionUpgrade<C> for Config
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = (PeerId, Stream<C>);
    type Error = TlsError;
    type Future = BoxFuture<'static, Result<Self::Output, Self::Error>>;

    fn upgrade_inbound(self, socket: C, _: Self::Info) -> Self::Future {
        async move {
            let stream = futures_rustls::TlsAcceptor::from(self.server)
                .accept(BufReader::with_capacity(READ_BUF, socket))
                .await
                .map_err(TlsError::Inbound)?;
            let peer = peer_of(stream.get_ref().1)?;
            Ok((peer, Coalesce::new(stream.into())))
        }
        .boxed()
    }
}

impl<C> OutboundConnectionUpgrade<C> for Config
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = (PeerId, Stream<C>);
    type Error = TlsError;
    type Future = BoxFuture<'static, Result<Self::Output, Self::Error>>;

    fn upgrade_outbound(self, socket: C, _: Self::Info) -> Self::Future {
        async move {
            // The spec: clients send no Server Name Indication; an unspecified address turns
            // it off in rustls.
            let name = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::UNSPECIFIED).into());
            let stream = futures_rustls::TlsConnector::from(self.client)
                .connect(name, BufReader::with_capacity(READ_BUF, socket))
                .await
                .map_err(TlsError::Outbound)?;
            // Which peer this is supposed to be (the /p2p/ part of the address dialled) is
            // checked by the swarm against the peer id returned here.
            let peer = peer_of(stream.get_ref().1)?;
            Ok((peer, Coalesce::new(stream.into())))
        }
        .boxed()
    }
}

/// A connection after the upgrade: TLS over a read buffer, writes gathered above it.
pub type Stream<C> = Coalesce<TlsStream<BufReader<C>>>;

/// Bytes read from the socket at a time. rustls asks for at most 4 KiB per read (its
/// deframer's `READ_SIZE`), so a 16 KiB record took four or five `recvfrom` calls: in a
/// 512 MiB copy's profile the suppliers' `recvfrom` went from 3.2% to 5.1% of all samples with
/// TLS instead of Noise (whose framing reads more at once), eating what the cheaper cipher saved.
const READ_BUF: usize = 64 << 10;

/// Bytes gathered before they go to TLS. yamux writes each frame as two writes, its 12-byte
/// header and then its body (up to 256 KiB, see `mux.rs`), and futures-rustls seals and sends
/// every write at once: a 12-byte record and a `sendto` of its own for every header. Gathered,
/// a header goes to TLS with its body, in full records, 64 KiB at a time. Noise gathers the
/// same way before it encrypts. yamux flushes after every frame it sends (`Connection::poll`),
/// which sends what was gathered, so nothing waits for the buffer to fill.
const WRITE_BUF: usize = 64 << 10;

/// Writes gathered into one buffer until it is full or flushed; reads pass through.
pub struct Coalesce<S> {
    inner: S,
    buf: Vec<u8>,
    /// How much of `buf` the inner stream has taken so far.
    sent: usize,
}

impl<S> Coalesce<S> {
    fn new(inner: S) -> Self {
        Self {
            inner,
            buf: Vec::with_capacity(WRITE_BUF),
            sent: 0,
        }
    }
}

#[cfg(test)]
impl<S> Coalesce<S> {
    fn inner(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncWrite + Unpin> Coalesce<S> {
    /// Hands the gathered bytes to the inner stream, all of them before `Ready`.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.buf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.buf.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Coalesce<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, out)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Coalesce<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.buf.len() >= WRITE_BUF {
            ready!(this.poll_send(cx))?;
        }
        let n = data.len().min(WRITE_BUF - this.buf.len());
        this.buf.extend_from_slice(&data[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.inner).poll_close(cx)
    }
}

/// The peer id in the certificate the handshake verified.
fn peer_of(state: &CommonState) -> Result<PeerId, TlsError> {
    match state.peer_certificates() {
        Some([cert]) => certificate::parse(cert)
            .map(|c| c.peer_id())
            .map_err(|e| TlsError::BadCertificate(e.to_string())),
        _ => Err(TlsError::BadCertificate(
            "not exactly one certificate".into(),
        )),
    }
}

/// Presents this node's one certificate, to servers and clients alike.
#[derive(Debug)]
struct OneCert(Arc<CertifiedKey>);

impl OneCert {
    fn new(cert: CertificateDer<'static>, key: &PrivateKeyDer<'_>) -> Result<Self, TlsError> {
        let signer = rustls::crypto::ring::sign::any_ecdsa_type(key)
            .map_err(|e| TlsError::Certificate(e.to_string()))?;
        Ok(Self(Arc::new(CertifiedKey::new(vec![cert], signer))))
    }
}

impl rustls::client::ResolvesClientCert for OneCert {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl rustls::server::ResolvesServerCert for OneCert {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// libp2p's rules for the peer's certificate chain: exactly one certificate, self-signed,
/// with a valid libp2p extension (`certificate::parse` checks all of it); the handshake
/// signature must verify with that certificate's key. Client certificates are mandatory.
#[derive(Debug)]
struct Verifier;

/// The signature schemes a libp2p certificate may use, most preferred first (as
/// `libp2p_tls` lists them; its `certificate` module verifies each).
const SCHEMES: &[SignatureScheme] = &[
    SignatureScheme::ECDSA_NISTP384_SHA384,
    SignatureScheme::ECDSA_NISTP256_SHA256,
    SignatureScheme::ED25519,
    SignatureScheme::RSA_PSS_SHA512,
    SignatureScheme::RSA_PSS_SHA384,
    SignatureScheme::RSA_PSS_SHA256,
    SignatureScheme::RSA_PKCS1_SHA512,
    SignatureScheme::RSA_PKCS1_SHA384,
    SignatureScheme::RSA_PKCS1_SHA256,
];

fn bad(e: impl std::fmt::Display) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(
        std::io::Error::other(e.to_string()),
    ))))
}

fn check_chain(
    end: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
) -> Result<(), rustls::Error> {
    if !intermediates.is_empty() {
        return Err(rustls::Error::General(
            "libp2p TLS takes exactly one certificate".into(),
        ));
    }
    certificate::parse(end).map(|_| ()).map_err(bad)
}

fn check_tls13(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    certificate::parse(cert)
        .map_err(bad)?
        .verify_signature(dss.scheme, message, dss.signature())
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadSignature))?;
    Ok(HandshakeSignatureValid::assertion())
}

/// Only TLS 1.3 is configured, so this is never asked; if it were, refuse rather than trust.
fn no_tls12() -> Result<HandshakeSignatureValid, rustls::Error> {
    Err(rustls::Error::General("libp2p TLS is TLS 1.3 only".into()))
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        check_chain(end, intermediates)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        no_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        check_tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        SCHEMES.to_vec()
    }
}

impl ClientCertVerifier for Verifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        check_chain(end, intermediates)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        no_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        check_tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        SCHEMES.to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::tcp::tokio::TcpStream;

    /// A connected pair of loopback TCP sockets, as futures' `AsyncRead + AsyncWrite`.
    async fn pair() -> (TcpStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (a, b) = tokio::join!(l.accept(), tokio::net::TcpStream::connect(addr));
        (TcpStream(a.unwrap().0), TcpStream(b.unwrap()))
    }

    /// [`Config::new`]'s configurations, presenting `cert` (possibly tampered with).
    fn config_with(cert: CertificateDer<'static>, key: &PrivateKeyDer<'_>) -> Config {
        Config::presenting(cert, key).unwrap()
    }

    /// A valid certificate of `key` with one byte of its signature flipped.
    fn tampered(key: &identity::Keypair) -> Config {
        let (cert, private) = certificate::generate(key).unwrap();
        let mut der = cert.as_ref().to_vec();
        let last = der.len() - 1;
        der[last] ^= 1;
        config_with(CertificateDer::from(der), &private)
    }

    #[tokio::test]
    async fn both_ends_learn_each_others_peer_id_over_aes_gcm() {
        let (ka, kb) = (
            identity::Keypair::generate_ed25519(),
            identity::Keypair::generate_ed25519(),
        );
        let (sa, sb) = pair().await;
        let (server, client) = tokio::join!(
            Config::new(&ka).unwrap().upgrade_inbound(sa, PROTOCOL),
            Config::new(&kb).unwrap().upgrade_outbound(sb, PROTOCOL),
        );
        let (seen_by_server, mut s) = server.unwrap();
        let (seen_by_client, mut c) = client.unwrap();
        assert_eq!(seen_by_server, kb.public().to_peer_id());
        assert_eq!(seen_by_client, ka.public().to_peer_id());
        let suite = c
            .inner()
            .get_ref()
            .1
            .negotiated_cipher_suite()
            .unwrap()
            .suite();
        assert_eq!(suite, rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
        // Bytes go through both ways.
        use futures::{AsyncReadExt, AsyncWriteExt};
        c.write_all(b"shard bytes").await.unwrap();
        c.flush().await.unwrap();
        let mut got = [0u8; 11];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"shard bytes");
    }

    /// Megabytes both ways at once, written in uneven pieces (as yamux writes headers and
    /// bodies) through the gathering writer and read in uneven pieces through the read buffer,
    /// arrive whole and in order.
    #[tokio::test]
    async fn bulk_bytes_cross_both_ways_unchanged() {
        use futures::{AsyncReadExt, AsyncWriteExt};
        let (ka, kb) = (
            identity::Keypair::generate_ed25519(),
            identity::Keypair::generate_ed25519(),
        );
        let (sa, sb) = pair().await;
        let (server, client) = tokio::join!(
            Config::new(&ka).unwrap().upgrade_inbound(sa, PROTOCOL),
            Config::new(&kb).unwrap().upgrade_outbound(sb, PROTOCOL),
        );
        let (s, c) = (server.unwrap().1, client.unwrap().1);
        let data = |seed: u64| -> Vec<u8> {
            let mut x = seed;
            (0..(3 << 20) + 12_345)
                .map(|_| {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (x >> 56) as u8
                })
                .collect()
        };
        async fn send(w: &mut (impl AsyncWrite + Unpin), bytes: &[u8]) {
            let mut at = 0;
            for (i, n) in [12usize, 16_384, 1, 65_536, 70_000, 3]
                .iter()
                .cycle()
                .enumerate()
            {
                if at == bytes.len() {
                    break;
                }
                let end = (at + n).min(bytes.len());
                w.write_all(&bytes[at..end]).await.unwrap();
                if i % 7 == 6 {
                    w.flush().await.unwrap();
                }
                at = end;
            }
            w.flush().await.unwrap();
        }
        async fn recv(r: &mut (impl AsyncRead + Unpin), len: usize) -> Vec<u8> {
            let mut got = vec![0u8; len];
            let mut at = 0;
            for n in [1usize, 4_000, 100_000, 17].iter().cycle() {
                if at == len {
                    break;
                }
                let end = (at + n).min(len);
                r.read_exact(&mut got[at..end]).await.unwrap();
                at = end;
            }
            got
        }
        let (up, down) = (data(1), data(2));
        let ((mut sr, mut sw), (mut cr, mut cw)) = (s.split(), c.split());
        let ((), (), got_up, got_down) = tokio::join!(
            send(&mut cw, &up),
            send(&mut sw, &down),
            recv(&mut sr, up.len()),
            recv(&mut cr, down.len()),
        );
        assert!(got_up == up, "bytes from the client arrived changed");
        assert!(got_down == down, "bytes from the server arrived changed");
    }

    #[tokio::test]
    async fn a_client_whose_certificate_does_not_verify_is_refused() {
        let (ka, kb) = (
            identity::Keypair::generate_ed25519(),
            identity::Keypair::generate_ed25519(),
        );
        let (sa, sb) = pair().await;
        let (server, _client) = tokio::join!(
            Config::new(&ka).unwrap().upgrade_inbound(sa, PROTOCOL),
            tampered(&kb).upgrade_outbound(sb, PROTOCOL),
        );
        assert!(
            matches!(server, Err(TlsError::Inbound(_))),
            "a forged client certificate was accepted"
        );
    }

    #[tokio::test]
    async fn a_server_whose_certificate_does_not_verify_is_refused() {
        let (ka, kb) = (
            identity::Keypair::generate_ed25519(),
            identity::Keypair::generate_ed25519(),
        );
        let (sa, sb) = pair().await;
        let (_server, client) = tokio::join!(
            tampered(&ka).upgrade_inbound(sa, PROTOCOL),
            Config::new(&kb).unwrap().upgrade_outbound(sb, PROTOCOL),
        );
        assert!(
            matches!(client, Err(TlsError::Outbound(_))),
            "a forged server certificate was accepted"
        );
    }

    /// Another peer's valid certificate, replayed without its key: only the handshake
    /// signature (made with the certificate's key) tells it apart.
    #[tokio::test]
    async fn a_certificate_presented_without_its_key_is_refused() {
        let (ka, kb) = (
            identity::Keypair::generate_ed25519(),
            identity::Keypair::generate_ed25519(),
        );
        let (stolen, _) = certificate::generate(&kb).unwrap();
        let (_, other_key) = certificate::generate(&kb).unwrap();
        let (sa, sb) = pair().await;
        let (server, _client) = tokio::join!(
            Config::new(&ka).unwrap().upgrade_inbound(sa, PROTOCOL),
            config_with(stolen.clone(), &other_key).upgrade_outbound(sb, PROTOCOL),
        );
        assert!(
            matches!(server, Err(TlsError::Inbound(_))),
            "a client certificate without its key was accepted"
        );
        let (sa, sb) = pair().await;
        let (_server, client) = tokio::join!(
            config_with(stolen, &other_key).upgrade_inbound(sa, PROTOCOL),
            Config::new(&ka).unwrap().upgrade_outbound(sb, PROTOCOL),
        );
        assert!(
            matches!(client, Err(TlsError::Outbound(_))),
            "a server certificate without its key was accepted"
        );
    }

    #[tokio::test]
    async fn a_client_without_a_certificate_is_refused() {
        let ka = identity::Keypair::generate_ed25519();
        let (sa, sb) = pair().await;
        let provider = Arc::new(rustls::crypto::CryptoProvider {
            cipher_suites: SUITES.to_vec(),
            ..rustls::crypto::ring::default_provider()
        });
        let mut anonymous = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Verifier))
            .with_no_client_auth();
        anonymous.alpn_protocols = vec![ALPN.to_vec()];
        let name = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::UNSPECIFIED).into());
        let (server, _client) = tokio::join!(
            Config::new(&ka).unwrap().upgrade_inbound(sa, PROTOCOL),
            futures_rustls::TlsConnector::from(Arc::new(anonymous)).connect(name, sb),
        );
        assert!(
            matches!(server, Err(TlsError::Inbound(_))),
            "a client without a certificate was accepted"
        );
    }
}
