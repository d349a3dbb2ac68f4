//! `convene-relay`: the seeded impairing UDP relay as a program, for tests
//! that put it in front of a server for clients that are not Rust (a
//! browser), and for measuring the server on a longer path (`convene load`
//! with `--webtransport-port`); each client gets a path of its own. With
//! `--tcp` it is the TCP relay instead, for WebSocket paths with a rate
//! limit the server feels as backpressure. Prints
//! `relay <listen address> -> <server address>` once it listens, then
//! relays until killed.

use std::net::SocketAddr;
use std::time::Duration;

use convene_testkit::{Impairment, TcpImpairment, TcpRelay, UdpRelay};

const USAGE: &str = "usage: convene-relay --to <server address> [--tcp] [--delay-ms N] [--up-kbps N] [--down-kbps N] [--up-loss P] [--down-loss P] [--loss-after-ms N] [--seed N]

Listens on a free loopback port and relays to the server, impairing the path.
Without --tcp it relays UDP (WebTransport), each client from a socket of its
own; with --tcp it relays TCP connections (WebSocket), reading from each side
only as fast as the rate allows, so a sender into a slow path finds its socket
writes blocking within about a second instead of filling buffers.

  --to         the server's address, e.g. 127.0.0.1:4433
  --tcp        relay TCP instead of UDP
  --delay-ms   one-way delay added in each direction (default 0)
  --up-kbps    client-to-server rate limit in kbit/s (default none); over UDP
               datagrams that would queue over 200 ms are dropped
  --down-kbps  server-to-client rate limit in kbit/s (default none)
  --up-loss    share of client-to-server datagrams dropped, 0.0-1.0 (default
               0; UDP only, TCP would retransmit them)
  --down-loss  share of server-to-client datagrams dropped, 0.0-1.0 (default 0;
               UDP only)
  --loss-after-ms  drop nothing for this long after starting, so a session
               can be set up before the path degrades (default 0; UDP only)
  --seed       seed of the random drops, so a run can be replayed (default 1)

Each direction's limits are shared by every client, as on a shared link.";

/// The relay's settings from the command line.
#[derive(Debug)]
struct Args {
    to: SocketAddr,
    tcp: bool,
    delay: Duration,
    /// Rate limits in bytes per second.
    up_rate: Option<u64>,
    down_rate: Option<u64>,
    up_loss: f64,
    down_loss: f64,
    loss_after: Duration,
    seed: u64,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut to = None;
    let (mut delay, mut up_loss, mut down_loss, mut seed) = (Duration::ZERO, 0.0, 0.0, 1);
    let mut loss_after = Duration::ZERO;
    let (mut tcp, mut up_rate, mut down_rate) = (false, None, None);
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            return Err(String::new());
        }
        if flag == "--tcp" {
            tcp = true;
            continue;
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |what: &str| format!("{flag}: `{value}` is not {what}");
        match flag.as_str() {
            "--to" => to = Some(value.parse().map_err(|_| bad("a socket address"))?),
            "--delay-ms" => {
                delay = Duration::from_millis(value.parse().map_err(|_| bad("a number"))?)
            }
            "--up-loss" | "--down-loss" => {
                let p: f64 = value.parse().map_err(|_| bad("a number"))?;
                if !(0.0..=1.0).contains(&p) {
                    return Err(bad("between 0 and 1"));
                }
                if flag == "--up-loss" {
                    up_loss = p;
                } else {
                    down_loss = p;
                }
            }
            "--loss-after-ms" => {
                loss_after = Duration::from_millis(value.parse().map_err(|_| bad("a number"))?)
            }
            "--up-kbps" | "--down-kbps" => {
                let kbps: u64 = value.parse().map_err(|_| bad("a number"))?;
                let rate = Some(kbps.saturating_mul(1000) / 8);
                if flag == "--up-kbps" {
                    up_rate = rate;
                } else {
                    down_rate = rate;
                }
            }
            "--seed" => seed = value.parse().map_err(|_| bad("a number"))?,
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    if tcp && (up_loss > 0.0 || down_loss > 0.0 || !loss_after.is_zero()) {
        return Err(
            "--up-loss, --down-loss and --loss-after-ms are for UDP; TCP would \
                    retransmit what is lost"
                .into(),
        );
    }
    Ok(Args {
        to: to.ok_or("--to is required")?,
        tcp,
        delay,
        up_rate,
        down_rate,
        up_loss,
        down_loss,
        loss_after,
        seed,
    })
}

fn main() {
    let args = match parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return;
        }
        Err(e) => {
            eprintln!("convene-relay: {e}\n\n{USAGE}");
            std::process::exit(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("convene-relay: cannot start: {e}");
            std::process::exit(1);
        }
    };
    runtime.block_on(async move {
        // Kept until the process is killed.
        let (_udp, _tcp, addr) = if args.tcp {
            let link = |rate| TcpImpairment {
                rate_bytes_per_sec: rate,
                delay: args.delay,
                ..TcpImpairment::NONE
            };
            let relay =
                TcpRelay::start(args.to, link(args.up_rate), link(args.down_rate), args.seed).await;
            let relay = relay.unwrap_or_else(|e| cannot_listen(e));
            let addr = relay.local_addr();
            (None, Some(relay), addr)
        } else {
            let link = |loss, rate| Impairment {
                loss,
                delay: args.delay,
                loss_after: args.loss_after,
                rate_bytes_per_sec: rate,
                ..Impairment::NONE
            };
            let (up, down) = (
                link(args.up_loss, args.up_rate),
                link(args.down_loss, args.down_rate),
            );
            let relay = UdpRelay::start(args.to, up, down, args.seed).await;
            let relay = relay.unwrap_or_else(|e| cannot_listen(e));
            let addr = relay.addr();
            (Some(relay), None, addr)
        };
        println!("relay {addr} -> {}", args.to);
        std::future::pending::<()>().await;
    });
}

fn cannot_listen(e: std::io::Error) -> ! {
    eprintln!("convene-relay: cannot listen: {e}");
    std::process::exit(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Result<Args, String> {
        parse(s.split_whitespace().map(String::from))
    }

    #[test]
    fn options_are_read_and_checked() {
        let a = args("--to 127.0.0.1:9 --delay-ms 150 --up-loss 0.2 --loss-after-ms 900 --seed 7")
            .unwrap();
        assert_eq!(a.loss_after, Duration::from_millis(900));
        assert_eq!(a.to, "127.0.0.1:9".parse().unwrap());
        assert_eq!(a.delay, Duration::from_millis(150));
        assert_eq!((a.up_loss, a.down_loss, a.seed), (0.2, 0.0, 7));
        assert!(args("--delay-ms 5").unwrap_err().contains("--to"));
        assert!(
            args("--to 127.0.0.1:9 --up-loss 2")
                .unwrap_err()
                .contains("between 0 and 1")
        );
        assert!(args("--to nowhere").unwrap_err().contains("socket address"));
        assert!(
            args("--to 127.0.0.1:9 --bogus 1")
                .unwrap_err()
                .contains("unknown option")
        );
        assert!(!a.tcp);
        assert_eq!((a.up_rate, a.down_rate), (None, None));
    }

    #[test]
    fn tcp_mode_takes_rates_in_kbit_and_refuses_loss() {
        let a =
            args("--tcp --to 127.0.0.1:9 --down-kbps 400 --up-kbps 1000 --delay-ms 20").unwrap();
        assert!(a.tcp);
        // 400 kbit/s is 50 000 bytes a second.
        assert_eq!((a.up_rate, a.down_rate), (Some(125_000), Some(50_000)));
        assert_eq!(a.delay, Duration::from_millis(20));
        assert!(
            args("--tcp --to 127.0.0.1:9 --down-loss 0.1")
                .unwrap_err()
                .contains("for UDP")
        );
    }
}
