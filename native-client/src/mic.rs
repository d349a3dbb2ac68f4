//! `--audio mic`: 20 ms frames of a microphone, read from an ALSA capture
//! device on a thread of its own so the device's clock paces the sound.

use tokio::sync::mpsc;

/// Frames waiting for the sender before newer ones are dropped (the device
/// must never wait for the network).
#[cfg(feature = "mic")]
const QUEUE: usize = 16;
/// How far ahead of the wall clock a device may deliver before it is made
/// to wait. A microphone never is (its clock drifts by parts per million);
/// a virtual device that reads a file would otherwise send a minute of
/// sound in a second.
#[cfg(feature = "mic")]
const AHEAD: std::time::Duration = std::time::Duration::from_secs(1);

/// Opens `device` (an ALSA PCM name: `default`, `plughw:1,0`, …) for mono
/// capture at `rate` and starts reading `frame` samples at a time.
#[cfg(feature = "mic")]
pub(crate) fn open(
    device: &str,
    rate: u32,
    frame: usize,
) -> anyhow::Result<mpsc::Receiver<Vec<i16>>> {
    use alsa::pcm::{Access, Format, HwParams, PCM};
    use alsa::{Direction, ValueOr};
    use anyhow::Context;

    let no_mic = || {
        format!(
            "no microphone: cannot open the ALSA capture device `{device}`; \
             name another with --audio-device (see `arecord -L`), or use --audio tone"
        )
    };
    let pcm = PCM::new(device, Direction::Capture, false).with_context(no_mic)?;
    {
        let hw = HwParams::any(&pcm).with_context(no_mic)?;
        hw.set_channels(1).with_context(|| {
            format!("the ALSA device `{device}` cannot record mono; try `plug{device}`")
        })?;
        hw.set_format(Format::s16()).with_context(|| {
            format!("the ALSA device `{device}` cannot record 16-bit samples; try `plug{device}`")
        })?;
        hw.set_access(Access::RWInterleaved).with_context(no_mic)?;
        hw.set_rate(rate, ValueOr::Nearest).with_context(|| {
            format!("the ALSA device `{device}` cannot record at {rate} Hz; try `plug{device}`")
        })?;
        hw.set_period_size_near(frame as alsa::pcm::Frames, ValueOr::Nearest)
            .with_context(no_mic)?;
        pcm.hw_params(&hw).with_context(no_mic)?;
    }
    let got = pcm
        .hw_params_current()
        .and_then(|h| h.get_rate())
        .with_context(no_mic)?;
    if got != rate {
        anyhow::bail!(
            "the ALSA device `{device}` records at {got} Hz, not {rate}; try `plug{device}`"
        );
    }
    pcm.start().with_context(no_mic)?;
    let (tx, rx) = mpsc::channel(QUEUE);
    let name = device.to_string();
    std::thread::Builder::new()
        .name("convene-mic".into())
        .spawn(move || capture(pcm, &name, rate, frame, tx))
        .context("cannot start the microphone's thread")?;
    Ok(rx)
}

/// Reads until the receiver is gone or the device fails for good.
#[cfg(feature = "mic")]
fn capture(pcm: alsa::pcm::PCM, device: &str, rate: u32, frame: usize, tx: mpsc::Sender<Vec<i16>>) {
    let io = match pcm.io_i16() {
        Ok(io) => io,
        Err(e) => {
            tracing::error!(device, error = %e, "cannot read the microphone");
            return;
        }
    };
    let mut buf = vec![0i16; frame];
    let mut filled = 0;
    let start = std::time::Instant::now();
    let frame_time = std::time::Duration::from_secs_f64(frame as f64 / f64::from(rate));
    let mut delivered = 0u32;
    loop {
        match io.readi(&mut buf[filled..]) {
            Ok(n) => {
                filled += n;
                if filled == frame {
                    filled = 0;
                    delivered = delivered.saturating_add(1);
                    let due = frame_time * delivered;
                    let ahead = due.saturating_sub(start.elapsed());
                    if ahead > AHEAD {
                        std::thread::sleep(ahead - AHEAD);
                    }
                    match tx.try_send(buf.clone()) {
                        Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => {}
                        Err(mpsc::error::TrySendError::Closed(_)) => return,
                    }
                }
            }
            // An overrun (we were late) is recovered from; anything else ends it.
            Err(e) => {
                if let Err(e) = pcm.try_recover(e, true) {
                    tracing::error!(device, error = %e, "the microphone stopped");
                    return;
                }
            }
        }
    }
}

/// Without the `mic` feature there is no microphone to open.
#[cfg(not(feature = "mic"))]
pub(crate) fn open(
    _device: &str,
    _rate: u32,
    _frame: usize,
) -> anyhow::Result<mpsc::Receiver<Vec<i16>>> {
    anyhow::bail!(
        "this convene was built without microphone support (cargo feature `mic`); use --audio tone"
    )
}
