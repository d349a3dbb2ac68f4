//! Sends the packets of many QUIC connections in one system call.
//!
//! `quinn-udp` sends one transmit (one peer, GSO segments) per `sendmsg`.
//! A frame fanned out to 200 subscribers is 200 transmits to 200 peers, and
//! the system call's own cost is a fifth of each send on loopback; Linux's
//! `sendmmsg` takes up to [`BATCH`] of them at once, each with its own
//! address and control messages (ECN, GSO segment size, source address),
//! encoded as `quinn-udp` encodes them. Elsewhere the transmits go through
//! `quinn-udp` one by one.
//!
//! The I/O side: the engine ([`super::engine`]) queues its transmits here
//! and this makes the system calls.
//!
//! With `tcp_info.rs`, the server's only `unsafe` code: the `msghdr`
//! structures the kernel reads. Every pointer in them points into `Queued` buffers or
//! locals that outlive the call.
#![allow(unsafe_code)]

use std::net::{IpAddr, SocketAddr};

use tracing::{debug, info};

/// Transmits handed to the kernel per system call.
pub(crate) const BATCH: usize = 64;

/// One transmit waiting for the next flush.
pub(crate) struct Queued {
    /// The packet bytes (several segments of `segment_size` with GSO).
    pub(crate) buf: Vec<u8>,
    /// Where they go.
    pub(crate) destination: SocketAddr,
    /// GSO segment size, when `buf` holds more than one datagram.
    pub(crate) segment_size: Option<usize>,
    /// The ECN codepoint's bits.
    pub(crate) ecn: Option<u8>,
    /// The local address to send from (the one the peer sent to).
    pub(crate) src_ip: Option<IpAddr>,
}

impl Queued {
    /// Whether it goes to an IPv4 peer (IPv4-mapped IPv6 included), whose
    /// ECN bits go in IP_TOS rather than IPV6_TCLASS.
    fn is_ipv4(&self) -> bool {
        self.destination.ip().to_canonical().is_ipv4()
    }

    /// The transmit `t` whose bytes QUIC wrote into `buf`.
    pub(crate) fn new(t: &quinn_proto::Transmit, mut buf: Vec<u8>) -> Self {
        buf.truncate(t.size);
        Queued {
            buf,
            destination: t.destination,
            segment_size: t.segment_size,
            ecn: t.ecn.map(|e| e as u8),
            src_ip: t.src_ip,
        }
    }
}

/// Room for one message's control data: IP_TOS or IPV6_TCLASS, UDP_SEGMENT
/// and IP_PKTINFO or IPV6_PKTINFO take at most 88 bytes.
#[cfg(target_os = "linux")]
const CONTROL_BYTES: usize = 96;

/// One message's control buffer, aligned as `cmsghdr` needs.
#[cfg(target_os = "linux")]
#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct Control([u8; CONTROL_BYTES]);

/// Appends control messages to a [`Control`] buffer.
#[cfg(target_os = "linux")]
struct ControlWriter {
    base: *mut u8,
    used: usize,
}

#[cfg(target_os = "linux")]
impl ControlWriter {
    /// Appends one message; one that would not fit is left out (none can:
    /// the buffer is sized for every message put here).
    fn put(&mut self, level: libc::c_int, ty: libc::c_int, data: &[u8]) {
        let len = data.len() as u32;
        // SAFETY: CMSG_SPACE is arithmetic on its argument.
        let space = unsafe { libc::CMSG_SPACE(len) } as usize;
        if self.used + space > CONTROL_BYTES {
            return;
        }
        // SAFETY: `base` points at CONTROL_BYTES bytes aligned to 8, and
        // `used` is a multiple of CMSG_ALIGN's 8, so the header at
        // `base + used` is aligned and it and its data fit (checked above).
        unsafe {
            let cmsg = self.base.add(self.used) as *mut libc::cmsghdr;
            (*cmsg).cmsg_level = level;
            (*cmsg).cmsg_type = ty;
            (*cmsg).cmsg_len = libc::CMSG_LEN(len) as _;
            std::ptr::copy_nonoverlapping(data.as_ptr(), libc::CMSG_DATA(cmsg), data.len());
        }
        self.used += space;
    }
}

/// Transmits waiting to be sent, and buffers to build the next ones in.
#[derive(Default)]
pub(crate) struct Batch {
    queue: Vec<Queued>,
    spare: Vec<Vec<u8>>,
    /// The kernel refused GSO once: QUIC is asked for single datagrams.
    gso_off: bool,
    /// The kernel refused the IPv4 TOS control message once (as `quinn-udp`
    /// handles it): it is left out from then on.
    tos_off: bool,
}

impl Batch {
    /// An empty buffer for QUIC to write the next transmit into.
    pub(crate) fn buffer(&mut self) -> Vec<u8> {
        let mut b = self.spare.pop().unwrap_or_default();
        b.clear();
        b
    }

    /// Gives back a buffer QUIC wrote nothing into.
    pub(crate) fn unused(&mut self, buf: Vec<u8>) {
        self.spare.push(buf);
    }

    /// Queues a transmit; true when the batch is full and should be flushed.
    pub(crate) fn push(&mut self, q: Queued) -> bool {
        self.queue.push(q);
        self.queue.len() >= BATCH
    }

    /// The most datagrams QUIC may put in one transmit.
    pub(crate) fn max_segments(&self, udp: &quinn_udp::UdpSocketState) -> usize {
        if self.gso_off {
            1
        } else {
            udp.max_gso_segments()
        }
    }

    /// Sends everything queued. A packet the kernel refuses (full socket
    /// buffer, too large for the path) is lost, as on any network; QUIC
    /// recovers it.
    pub(crate) fn flush(
        &mut self,
        socket: &tokio::net::UdpSocket,
        udp: &quinn_udp::UdpSocketState,
    ) {
        let mut done = 0;
        while done < self.queue.len() {
            let end = (done + BATCH).min(self.queue.len());
            match self.send(socket, udp, done, end) {
                Ok(n) => done += n.max(1),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    debug!(
                        "WebTransport socket buffer full: {} transmits dropped",
                        end - done
                    );
                    done = end;
                }
                Err(e) => {
                    let q = &self.queue[done];
                    let gso = q.segment_size.is_some_and(|s| s < q.buf.len());
                    let code = e.raw_os_error();
                    if gso && matches!(code, Some(libc::EIO) | Some(libc::EINVAL)) && !self.gso_off
                    {
                        info!(error = %e, "the kernel refused a GSO send; sending single datagrams from now on");
                        self.gso_off = true;
                    } else if code == Some(libc::EINVAL) && q.is_ipv4() && !self.tos_off {
                        info!(error = %e, "the kernel refused the TOS control message; sending without it");
                        self.tos_off = true;
                        continue;
                    } else if code != Some(libc::EMSGSIZE) {
                        // EMSGSIZE is expected for MTU probes.
                        debug!(error = %e, destination = %q.destination, "WebTransport send failed");
                    }
                    done += 1;
                }
            }
        }
        for q in self.queue.drain(..) {
            self.spare.push(q.buf);
        }
    }

    #[cfg(target_os = "linux")]
    fn send(
        &self,
        socket: &tokio::net::UdpSocket,
        _udp: &quinn_udp::UdpSocketState,
        from: usize,
        to: usize,
    ) -> std::io::Result<usize> {
        use std::os::fd::AsRawFd;

        let queue = &self.queue[from..to];
        let addrs: Vec<socket2::SockAddr> = queue
            .iter()
            .map(|q| socket2::SockAddr::from(q.destination))
            .collect();
        let mut iovs: Vec<libc::iovec> = queue
            .iter()
            .map(|q| libc::iovec {
                iov_base: q.buf.as_ptr() as *mut libc::c_void,
                iov_len: q.buf.len(),
            })
            .collect();
        let mut controls = vec![Control([0; CONTROL_BYTES]); queue.len()];
        // Pointers into the two vectors are taken once, from `as_mut_ptr`,
        // so that none of them is invalidated by a later borrow.
        let iov_base = iovs.as_mut_ptr();
        let control_base = controls.as_mut_ptr();
        let mut hdrs: Vec<libc::mmsghdr> = Vec::with_capacity(queue.len());
        for (i, q) in queue.iter().enumerate() {
            // SAFETY: `i` is below the length of both vectors.
            let (iov, control) = unsafe { (iov_base.add(i), control_base.add(i) as *mut u8) };
            let mut w = ControlWriter {
                base: control,
                used: 0,
            };
            let ecn = libc::c_int::from(q.ecn.unwrap_or(0)).to_ne_bytes();
            if !q.is_ipv4() {
                w.put(libc::IPPROTO_IPV6, libc::IPV6_TCLASS, &ecn);
            } else if !self.tos_off {
                w.put(libc::IPPROTO_IP, libc::IP_TOS, &ecn);
            }
            if let Some(seg) = q.segment_size.filter(|s| *s < q.buf.len()) {
                w.put(
                    libc::SOL_UDP,
                    libc::UDP_SEGMENT,
                    &(seg as u16).to_ne_bytes(),
                );
            }
            match q.src_ip {
                Some(IpAddr::V4(ip)) => {
                    // in_pktinfo: ifindex (0: any), the source address, and
                    // the destination (unused when sending).
                    let mut info = [0u8; std::mem::size_of::<libc::in_pktinfo>()];
                    info[4..8].copy_from_slice(&ip.octets());
                    w.put(libc::IPPROTO_IP, libc::IP_PKTINFO, &info);
                }
                Some(IpAddr::V6(ip)) => {
                    // in6_pktinfo: the source address, then ifindex (0: any).
                    let mut info = [0u8; std::mem::size_of::<libc::in6_pktinfo>()];
                    info[..16].copy_from_slice(&ip.octets());
                    w.put(libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, &info);
                }
                None => {}
            }
            // SAFETY: all-zero is a valid (empty) msghdr.
            let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
            hdr.msg_name = addrs[i].as_ptr() as *mut libc::c_void;
            hdr.msg_namelen = addrs[i].len();
            hdr.msg_iov = iov;
            hdr.msg_iovlen = 1;
            if w.used > 0 {
                hdr.msg_control = control as *mut libc::c_void;
                hdr.msg_controllen = w.used as _;
            }
            hdrs.push(libc::mmsghdr {
                msg_hdr: hdr,
                msg_len: 0,
            });
        }
        // SAFETY: `hdrs` holds `queue.len()` headers whose names, iovecs,
        // packet buffers and control messages all live until this returns;
        // the kernel only reads them (and writes `msg_len`).
        let n = unsafe {
            libc::sendmmsg(
                socket.as_raw_fd(),
                hdrs.as_mut_ptr(),
                hdrs.len() as libc::c_uint,
                0,
            )
        };
        if n < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
    #[cfg(not(target_os = "linux"))]
    fn send(
        &self,
        socket: &tokio::net::UdpSocket,
        udp: &quinn_udp::UdpSocketState,
        from: usize,
        to: usize,
    ) -> std::io::Result<usize> {
        for q in &self.queue[from..to] {
            let t = quinn_udp::Transmit {
                destination: q.destination,
                ecn: q.ecn.and_then(quinn_udp::EcnCodepoint::from_bits),
                contents: &q.buf,
                segment_size: q.segment_size,
                src_ip: q.src_ip,
            };
            if let Err(e) = udp.send(socket.into(), &t) {
                debug!(error = %e, "WebTransport send failed");
            }
        }
        Ok(to - from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn queued(buf: Vec<u8>, to: SocketAddr, segment_size: Option<usize>) -> Queued {
        Queued {
            buf,
            destination: to,
            segment_size,
            ecn: Some(0b10),
            src_ip: Some(IpAddr::from([127, 0, 0, 1])),
        }
    }

    /// The sending socket, bound to `addr`, and its `quinn-udp` state.
    fn sender(addr: &str) -> (tokio::net::UdpSocket, quinn_udp::UdpSocketState) {
        let std = std::net::UdpSocket::bind(addr).unwrap();
        std.set_nonblocking(true).unwrap();
        let socket = tokio::net::UdpSocket::from_std(std).unwrap();
        let udp = quinn_udp::UdpSocketState::new((&socket).into()).unwrap();
        (socket, udp)
    }

    async fn recv(s: &tokio::net::UdpSocket) -> Vec<u8> {
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), s.recv(&mut buf))
            .await
            .expect("a datagram within 10 s")
            .expect("receive");
        buf.truncate(n);
        buf
    }

    #[tokio::test]
    async fn one_flush_delivers_every_peers_packets_with_gso_segments_split() {
        let (socket, udp) = sender("127.0.0.1:0");
        let mut peers = Vec::new();
        for _ in 0..3 {
            peers.push(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
        }
        let mut batch = Batch::default();
        // More than one system call's worth, so the flush loops.
        let rounds = BATCH / peers.len() + 2;
        for r in 0..rounds {
            for (i, p) in peers.iter().enumerate() {
                let to = p.local_addr().unwrap();
                let q = if i == 0 && udp.max_gso_segments() > 1 {
                    // Two segments of 100 bytes and a short third.
                    let mut b = vec![r as u8; 100];
                    b.extend(vec![r as u8 + 100; 100]);
                    b.extend(vec![r as u8 + 200; 30]);
                    queued(b, to, Some(100))
                } else {
                    queued(vec![i as u8, r as u8], to, None)
                };
                if batch.push(q) {
                    batch.flush(&socket, &udp);
                }
            }
        }
        batch.flush(&socket, &udp);
        for r in 0..rounds {
            for (i, p) in peers.iter().enumerate() {
                if i == 0 && udp.max_gso_segments() > 1 {
                    assert_eq!(recv(p).await, vec![r as u8; 100]);
                    assert_eq!(recv(p).await, vec![r as u8 + 100; 100]);
                    assert_eq!(recv(p).await, vec![r as u8 + 200; 30]);
                } else {
                    assert_eq!(recv(p).await, vec![i as u8, r as u8], "peer {i} round {r}");
                }
            }
        }
        assert!(batch.queue.is_empty());
        assert!(!batch.spare.is_empty(), "buffers come back for reuse");
    }

    /// Receives one datagram with what `quinn-udp` reads of it.
    fn recv_meta(s: &std::net::UdpSocket) -> (Vec<u8>, quinn_udp::RecvMeta) {
        let state = quinn_udp::UdpSocketState::new(s.into()).unwrap();
        let mut buf = vec![0u8; 2048];
        let mut meta = [quinn_udp::RecvMeta::default()];
        let n = {
            let mut slices = [std::io::IoSliceMut::new(&mut buf)];
            state
                .recv(s.into(), &mut slices, &mut meta)
                .expect("a datagram within 10 s")
        };
        assert_eq!(n, 1);
        buf.truncate(meta[0].len);
        (buf, meta[0])
    }

    #[tokio::test]
    async fn ecn_and_the_source_address_are_sent_as_asked() {
        // Bound to every address, so the source address comes from the
        // control message: 127.0.0.2 is as local as 127.0.0.1.
        let (socket, udp) = sender("0.0.0.0:0");
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let to = peer.local_addr().unwrap();
        let mut batch = Batch::default();
        let mut q = queued(vec![7; 10], to, None);
        q.src_ip = Some(IpAddr::from([127, 0, 0, 2]));
        batch.push(q);
        let mut q = queued(vec![8; 10], to, None);
        q.ecn = Some(0b01);
        batch.push(q);
        batch.flush(&socket, &udp);
        let (data, meta) = recv_meta(&peer);
        assert_eq!(data, vec![7; 10]);
        assert_eq!(meta.ecn, Some(quinn_udp::EcnCodepoint::Ect0));
        assert_eq!(meta.addr.ip(), IpAddr::from([127, 0, 0, 2]));
        let (data, meta) = recv_meta(&peer);
        assert_eq!(data, vec![8; 10]);
        assert_eq!(meta.ecn, Some(quinn_udp::EcnCodepoint::Ect1));
        assert_eq!(meta.addr.ip(), IpAddr::from([127, 0, 0, 1]));
    }

    #[tokio::test]
    async fn a_refused_packet_is_dropped_and_the_rest_still_go() {
        let (socket, udp) = sender("127.0.0.1:0");
        let peer = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = peer.local_addr().unwrap();
        let mut batch = Batch::default();
        batch.push(queued(vec![1], to, None));
        // Larger than any UDP datagram: EMSGSIZE, as for an MTU probe.
        batch.push(queued(vec![0; 70_000], to, None));
        batch.push(queued(vec![3], to, None));
        batch.flush(&socket, &udp);
        assert_eq!(recv(&peer).await, vec![1]);
        assert_eq!(recv(&peer).await, vec![3]);
    }
}
