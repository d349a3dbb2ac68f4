//! What the page asks the server to send of each remote video track
//! (PROTOCOL.md §6.6.3): the size at which its tile is shown, in device
//! pixels, or nothing while the tile is not on screen. Pure, so it is
//! tested natively; the wasm32 side measures tiles and sends the asks.

/// Tile sizes are rounded down to this many device pixels, so a tile that
/// changes by a few pixels does not ask again.
pub const STEP: u32 = 32;

/// What one tile wants of its track.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Wanted {
    /// Widest picture worth sending, device pixels; 0 for no limit.
    pub max_width: u32,
    /// Tallest picture worth sending, device pixels; 0 for no limit.
    pub max_height: u32,
    /// Not on screen: nothing is worth sending.
    pub paused: bool,
}

/// What a tile shown at `css_width`×`css_height` CSS pixels on a screen of
/// `pixel_ratio` device pixels per CSS pixel wants of a picture of
/// `picture` (width, height; unknown: the tile's shape): the size the
/// picture takes in the tile (it is letterboxed, not cropped), in device
/// pixels, rounded down to [`STEP`] (a server sends the smallest encoding
/// at least that large, so rounding up would often ask for the next one);
/// paused when the tile has no area (hidden).
pub fn wanted(
    css_width: f64,
    css_height: f64,
    pixel_ratio: f64,
    picture: Option<(u32, u32)>,
) -> Wanted {
    let ratio = if pixel_ratio.is_finite() && pixel_ratio > 0.0 {
        pixel_ratio
    } else {
        1.0
    };
    let shown = |css: f64| {
        if !css.is_finite() || css <= 0.0 {
            0.0
        } else {
            (css * ratio).min(16_384.0)
        }
    };
    let (mut w, mut h) = (shown(css_width), shown(css_height));
    if w == 0.0 || h == 0.0 {
        return Wanted {
            paused: true,
            ..Wanted::default()
        };
    }
    if let Some((pw, ph)) = picture.filter(|(pw, ph)| *pw > 0 && *ph > 0) {
        let scale = (w / f64::from(pw)).min(h / f64::from(ph));
        (w, h) = (f64::from(pw) * scale, f64::from(ph) * scale);
    }
    let step = |px: f64| ((px as u32) / STEP * STEP).max(STEP);
    Wanted {
        max_width: step(w),
        max_height: step(h),
        paused: false,
    }
}

/// Picks which of the tiles whose wish changed to tell the server about now:
/// at most one a call (the page calls four times a second, PROTOCOL.md
/// §6.6.3's ceiling), the one asked about longest ago first. `changed`
/// holds, per tile, when it was last sent (ms on the page clock; `None`:
/// never).
pub fn next_to_send<K: Copy>(changed: impl IntoIterator<Item = (K, Option<f64>)>) -> Option<K> {
    changed
        .into_iter()
        .min_by(|a, b| {
            let t = |x: Option<f64>| x.unwrap_or(f64::NEG_INFINITY);
            t(a.1).total_cmp(&t(b.1))
        })
        .map(|(k, _)| k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tile_wants_its_size_in_device_pixels() {
        assert_eq!(
            wanted(240.0, 180.0, 1.0, None),
            Wanted {
                max_width: 224,
                max_height: 160,
                paused: false
            }
        );
        // A high-density screen shows twice the pixels.
        assert_eq!(wanted(240.0, 180.0, 2.0, None).max_width, 480);
        assert_eq!(wanted(240.0, 180.0, 2.0, None).max_height, 352);
        // A few pixels' change asks for nothing new.
        assert_eq!(
            wanted(241.0, 181.0, 1.0, None),
            wanted(250.0, 190.0, 1.0, None)
        );
    }

    #[test]
    fn a_wide_picture_in_a_four_by_three_tile_asks_for_what_it_fills() {
        // 16:9 in 160x120: shown 160x90, which a 160x90 encoding covers.
        let w = wanted(160.0, 120.0, 1.0, Some((320, 180)));
        assert_eq!((w.max_width, w.max_height), (160, 64));
        // A tall tile: the width decides.
        let w = wanted(320.0, 400.0, 1.0, Some((1280, 720)));
        assert_eq!((w.max_width, w.max_height), (320, 160));
        // Unknown sizes are the tile's.
        assert_eq!(
            wanted(160.0, 120.0, 1.0, Some((0, 0))),
            wanted(160.0, 120.0, 1.0, None)
        );
    }

    #[test]
    fn a_hidden_tile_pauses() {
        assert!(wanted(0.0, 0.0, 1.0, None).paused);
        assert!(wanted(300.0, 0.0, 1.0, None).paused);
        assert!(wanted(f64::NAN, 100.0, 1.0, None).paused);
        // A nonsense ratio counts as 1; a tiny tile asks for one step.
        assert_eq!(wanted(100.0, 100.0, 0.0, None).max_width, 96);
        assert_eq!(wanted(10.0, 10.0, 1.0, None).max_width, STEP);
    }

    #[test]
    fn the_longest_waiting_tile_goes_first() {
        assert_eq!(next_to_send::<u32>([]), None);
        assert_eq!(
            next_to_send([(1, Some(500.0)), (2, None), (3, Some(100.0))]),
            Some(2)
        );
        assert_eq!(next_to_send([(1, Some(500.0)), (3, Some(100.0))]), Some(3));
    }
}
