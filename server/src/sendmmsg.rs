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
//! This is the server's only `unsafe` code: the `msghdr` structures the
//! kernel reads. Every pointer in them points into `Queued` buffers or
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
                    } else if code == Some(libc::EINVAL) && q.ecn.is_some() && !self.tos_off {
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
        // Room for IP_TOS / IPV6_TCLASS, UDP_SEGMENT and IP(V6)_PKTINFO.
        const CMSG_BYTES: usize = 96;
        #[derive(Clone, Copy)]
        #[repr(C, align(8))]
        struct Control([u8; CMSG_BYTES]);

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
        let mut controls = vec![Control([0; CMSG_BYTES]); queue.len()];
        let mut hdrs: Vec<libc::mmsghdr> = Vec::with_capacity(queue.len());
        for (i, q) in queue.iter().enumerate() {
            // SAFETY: all-zero is a valid (empty) msghdr.
            let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
            hdr.msg_name = addrs[i].as_ptr() as *mut libc::c_void;
            hdr.msg_namelen = addrs[i].len();
            hdr.msg_iov = &mut iovs[i];
            hdr.msg_iovlen = 1;
            hdr.msg_control = controls[i].0.as_mut_ptr() as *mut libc::c_void;
            hdr.msg_controllen = CMSG_BYTES as _;
            let mut used = 0;
            {
                let mut put = |level: libc::c_int, ty: libc::c_int, data: &[u8]| {
                    // SAFETY: `hdr` describes `controls[i]`, CMSG_BYTES bytes,
                    // 8-aligned, which holds the three messages at most that
                    // are put here; CMSG_NXTHDR-style stepping is done by
                    // `used`, which stays below CMSG_BYTES.
                    unsafe {
                        let space = libc::CMSG_SPACE(data.len() as u32) as usize;
                        debug_assert!(used + space <= CMSG_BYTES);
                        let cmsg = controls[i].0.as_mut_ptr().add(used) as *mut libc::cmsghdr;
                        (*cmsg).cmsg_level = level;
                        (*cmsg).cmsg_type = ty;
                        (*cmsg).cmsg_len = libc::CMSG_LEN(data.len() as u32) as _;
                        std::ptr::copy_nonoverlapping(
                            data.as_ptr(),
                            libc::CMSG_DATA(cmsg),
                            data.len(),
                        );
                        used += space;
                    }
                };
                let ecn = libc::c_int::from(q.ecn.unwrap_or(0));
                let v4 = q.destination.is_ipv4()
                    || matches!(q.destination.ip(), IpAddr::V6(a) if a.to_ipv4_mapped().is_some());
                if !v4 {
                    put(libc::IPPROTO_IPV6, libc::IPV6_TCLASS, &ecn.to_ne_bytes());
                } else if !self.tos_off {
                    put(libc::IPPROTO_IP, libc::IP_TOS, &ecn.to_ne_bytes());
                }
                if let Some(s) = q.segment_size.filter(|s| *s < q.buf.len()) {
                    put(libc::SOL_UDP, libc::UDP_SEGMENT, &(s as u16).to_ne_bytes());
                }
                match q.src_ip {
                    Some(IpAddr::V4(ip)) => {
                        let info = libc::in_pktinfo {
                            ipi_ifindex: 0,
                            ipi_spec_dst: libc::in_addr {
                                s_addr: u32::from_ne_bytes(ip.octets()),
                            },
                            ipi_addr: libc::in_addr { s_addr: 0 },
                        };
                        // SAFETY: in_pktinfo is plain old data.
                        let bytes = unsafe {
                            std::slice::from_raw_parts(
                                &info as *const libc::in_pktinfo as *const u8,
                                std::mem::size_of::<libc::in_pktinfo>(),
                            )
                        };
                        put(libc::IPPROTO_IP, libc::IP_PKTINFO, bytes);
                    }
                    Some(IpAddr::V6(ip)) => {
                        let info = libc::in6_pktinfo {
                            ipi6_ifindex: 0,
                            ipi6_addr: libc::in6_addr {
                                s6_addr: ip.octets(),
                            },
                        };
                        // SAFETY: in6_pktinfo is plain old data.
                        let bytes = unsafe {
                            std::slice::from_raw_parts(
                                &info as *const libc::in6_pktinfo as *const u8,
                                std::mem::size_of::<libc::in6_pktinfo>(),
                            )
                        };
                        put(libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, bytes);
                    }
                    None => {}
                }
            }
            hdr.msg_controllen = used as _;
            if used == 0 {
                hdr.msg_control = std::ptr::null_mut();
            }
            hdrs.push(libc::mmsghdr {
                msg_hdr: hdr,
                msg_len: 0,
            });
        }
        // SAFETY: `hdrs` holds `queue.len()` headers whose names, iovecs,
        // buffers and control messages all live until this returns.
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
        let std = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        std.set_nonblocking(true).unwrap();
        let socket = tokio::net::UdpSocket::from_std(std).unwrap();
        let udp = quinn_udp::UdpSocketState::new((&socket).into()).unwrap();
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
                if i == 0 && udp.max_gso_segments() > 1 {
                    // Two segments of 100 bytes and a short third.
                    let mut b = vec![r as u8; 100];
                    b.extend(vec![r as u8 + 100; 100]);
                    b.extend(vec![r as u8 + 200; 30]);
                    if batch.push(queued(b, to, Some(100))) {
                        batch.flush(&socket, &udp);
                    }
                } else {
                    let full = batch.push(queued(vec![i as u8, r as u8], to, None));
                    if full {
                        batch.flush(&socket, &udp);
                    }
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

    #[tokio::test]
    async fn a_refused_packet_is_dropped_and_the_rest_still_go() {
        let std = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        std.set_nonblocking(true).unwrap();
        let socket = tokio::net::UdpSocket::from_std(std).unwrap();
        let udp = quinn_udp::UdpSocketState::new((&socket).into()).unwrap();
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
