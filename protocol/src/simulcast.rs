//! The simulcast ladder every Convene publisher uses (PROTOCOL.md §6.6.1):
//! which encodings a picture is sent in, at what size and bitrate. One place, so the native and the browser client announce
//! and encode the same ladder.

use crate::v1;

/// The smallest encoding's least width and height: below this a picture
/// is not worth a rung of its own.
pub const MIN_RUNG: (u32, u32) = (160, 90);

/// One encoding of a picture: its size and bitrate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rung {
    /// Width in pixels (even).
    pub width: u32,
    /// Height in pixels (even).
    pub height: u32,
    /// Target bitrate, kbit/s.
    pub kbps: u32,
}

/// The encodings of a `width`x`height` picture sent at `kbps`: the picture
/// itself, then halved while it stays at least [`MIN_RUNG`] (up to three,
/// lowest first), at about a third and a tenth of the rate: the proportions
/// of the area, less what small pictures lose. One rung when `simulcast` is
/// off or the picture is too small to halve.
pub fn ladder(width: u32, height: u32, kbps: u32, simulcast: bool) -> Vec<Rung> {
    let mut rungs = vec![Rung {
        width,
        height,
        kbps,
    }];
    if simulcast {
        for share in [3, 10] {
            let last = rungs[0];
            let (w, h) = ((last.width / 2) & !1, (last.height / 2) & !1);
            if w < MIN_RUNG.0 || h < MIN_RUNG.1 {
                break;
            }
            rungs.insert(
                0,
                Rung {
                    width: w,
                    height: h,
                    kbps: (kbps / share).max(50),
                },
            );
        }
    }
    rungs
}

/// The `TrackInfo.encodings` announcing `rungs` at `fps` with
/// `temporal_layers` each; none for a single rung (a plain track).
pub fn encodings(rungs: &[Rung], fps: u32, temporal_layers: u32) -> Vec<v1::Encoding> {
    if rungs.len() < 2 {
        return Vec::new();
    }
    rungs
        .iter()
        .map(|r| v1::Encoding {
            width: r.width,
            height: r.height,
            frame_rate: fps,
            target_bitrate_kbps: r.kbps,
            temporal_layers,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ladder_halves_down_to_small_pictures() {
        let l = ladder(1280, 720, 1500, true);
        let sizes: Vec<_> = l.iter().map(|r| (r.width, r.height, r.kbps)).collect();
        assert_eq!(
            sizes,
            vec![(320, 180, 150), (640, 360, 500), (1280, 720, 1500)]
        );
        assert_eq!(
            ladder(318, 178, 300, true).len(),
            1,
            "160x90 is the smallest rung"
        );
        assert_eq!(ladder(640, 360, 300, true)[0].width, 160);
        assert_eq!(ladder(1280, 720, 300, false).len(), 1);
        assert_eq!(
            ladder(640, 480, 800, true)
                .iter()
                .map(|r| (r.width, r.height))
                .collect::<Vec<_>>(),
            vec![(160, 120), (320, 240), (640, 480)]
        );
    }

    #[test]
    fn announced_only_for_several_rungs() {
        assert!(encodings(&ladder(1280, 720, 1500, false), 30, 1).is_empty());
        let e = encodings(&ladder(1280, 720, 1500, true), 30, 2);
        assert_eq!(e.len(), 3);
        assert_eq!((e[2].width, e[2].target_bitrate_kbps), (1280, 1500));
        assert!(
            e.iter()
                .all(|e| e.temporal_layers == 2 && e.frame_rate == 30)
        );
    }
}
