//! The kernel's view of a TCP connection (`TCP_INFO`), read for the
//! subscriber's path estimate ([`crate::estimate::tcp_kbps`]).
//!
//! Besides `wt/udp.rs` and two calls in `recording.rs` (kill, prctl), the one module with `unsafe` code: `getsockopt`
//! has no safe wrapper for `TCP_INFO` in the crates the server uses.
#![allow(unsafe_code)]

use std::os::fd::RawFd;
use std::time::Duration;

use crate::estimate::TcpSample;

/// Reads `TCP_INFO` of the TCP socket `fd`; `None` when the kernel
/// refuses, or is too old to fill the fields the estimate reads
/// (`tcpi_delivery_rate` and `tcpi_rwnd_limited` came with Linux 4.9/4.10).
#[cfg(target_os = "linux")]
pub fn read(fd: RawFd) -> Option<TcpSample> {
    // SAFETY: tcp_info is plain integers, for which all zero bytes is a value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` is a live, writable tcp_info and `len` holds its size:
    // the kernel writes at most `len` bytes into it and stores how many in
    // `len`. `fd` is only a number to the kernel: a descriptor closed (or
    // reused) meanwhile makes the call fail or describe another socket,
    // never write outside `info`.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast::<libc::c_void>(),
            &mut len,
        )
    };
    let needed = std::mem::offset_of!(libc::tcp_info, tcpi_rwnd_limited) + 8;
    if r != 0 || (len as usize) < needed {
        return None;
    }
    Some(TcpSample {
        delivery_rate: info.tcpi_delivery_rate,
        cwnd_bytes: u64::from(info.tcpi_snd_cwnd) * u64::from(info.tcpi_snd_mss),
        rtt: Duration::from_micros(u64::from(info.tcpi_rtt)),
        notsent_bytes: info.tcpi_notsent_bytes,
        rwnd_limited: Duration::from_micros(info.tcpi_rwnd_limited),
        bytes_acked: info.tcpi_bytes_acked,
    })
}

/// Elsewhere there is no `TCP_INFO` of this shape: no estimate.
#[cfg(not(target_os = "linux"))]
pub fn read(_fd: RawFd) -> Option<TcpSample> {
    None
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    #[test]
    fn a_loopback_connection_has_a_window_and_a_round_trip() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        std::io::Write::write_all(&mut &server, &[7u8; 100_000]).unwrap();
        let mut buf = vec![0u8; 100_000];
        std::io::Read::read_exact(&mut &client, &mut buf).unwrap();
        let s = super::read(server.as_raw_fd()).expect("TCP_INFO on Linux");
        assert!(s.cwnd_bytes > 0, "{s:?}");
        assert!(s.delivery_rate > 0, "{s:?}");
        assert!(s.bytes_acked >= 100_000, "{s:?}");
        // Not a socket: no answer, no harm.
        assert_eq!(super::read(-1), None);
    }
}
