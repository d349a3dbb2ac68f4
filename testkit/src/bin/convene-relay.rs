//! `convene-relay`: the seeded impairing UDP relay as a program, for tests
//! that put it in front of a server for clients that are not Rust (a
//! browser), and for measuring the server on a longer path (`convene load`
//! with `--webtransport-port`); each client gets a path of its own. Prints
//! `relay <listen address> -> <server address>` once it listens, then
//! relays until killed.

use std::net::SocketAddr;
use std::time::Duration;

use convene_testkit::{Impairment, UdpRelay};

const USAGE: &str = "usage: convene-relay --to <server udp address> [--delay-ms N] [--up-loss P] [--down-loss P] [--loss-after-ms N] [--seed N]

  --to         the server's UDP address, e.g. 127.0.0.1:4433
  --delay-ms   one-way delay added in each direction (default 0)
  --up-loss    share of client-to-server datagrams dropped, 0.0-1.0 (default 0)
  --down-loss  share of server-to-client datagrams dropped, 0.0-1.0 (default 0)
  --loss-after-ms  drop nothing for this long after starting, so a session
               can be set up before the path degrades (default 0)
  --seed       seed of the random drops, so a run can be replayed (default 1)";

/// The relay's settings from the command line.
#[derive(Debug)]
struct Args {
    to: SocketAddr,
    delay: Duration,
    up_loss: f64,
    down_loss: f64,
    loss_after: Duration,
    seed: u64,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut to = None;
    let (mut delay, mut up_loss, mut down_loss, mut seed) = (Duration::ZERO, 0.0, 0.0, 1);
    let mut loss_after = Duration::ZERO;
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            return Err(String::new());
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
            "--seed" => seed = value.parse().map_err(|_| bad("a number"))?,
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    Ok(Args {
        to: to.ok_or("--to is required")?,
        delay,
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
        let link = |loss| Impairment {
            loss,
            delay: args.delay,
            loss_after: args.loss_after,
            ..Impairment::NONE
        };
        let relay =
            match UdpRelay::start(args.to, link(args.up_loss), link(args.down_loss), args.seed)
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("convene-relay: cannot listen: {e}");
                    std::process::exit(1);
                }
            };
        println!("relay {} -> {}", relay.addr(), args.to);
        std::future::pending::<()>().await;
    });
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
    }
}
