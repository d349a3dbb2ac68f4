//! What the page asks the server to send of each remote video track
//! (PROTOCOL.md §6.6.3): the size at which its tile is shown, in device
//! pixels, or nothing while the tile is not on screen. Pure, so it is
//! tested natively; the wasm32 side measures tiles and sends the asks.

/// Tile sizes are rounded up to this many device pixels, so a tile that
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
/// `pixel_ratio` device pixels per CSS pixel wants: its size in device
/// pixels, rounded up to [`STEP`]; paused when it has no area (hidden).
pub fn wanted(css_width: f64, css_height: f64, pixel_ratio: f64) -> Wanted {
    let ratio = if pixel_ratio.is_finite() && pixel_ratio > 0.0 {
        pixel_ratio
    } else {
        1.0
    };
    let device = |css: f64| {
        if !css.is_finite() || css <= 0.0 {
            return 0;
        }
        let px = (css * ratio).ceil().min(16_384.0) as u32;
        px.div_ceil(STEP) * STEP
    };
    let (w, h) = (device(css_width), device(css_height));
    if w == 0 || h == 0 {
        return Wanted {
            paused: true,
            ..Wanted::default()
        };
    }
    Wanted {
        max_width: w,
        max_height: h,
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
            wanted(240.0, 180.0, 1.0),
            Wanted {
                max_width: 256,
                max_height: 192,
                paused: false
            }
        );
        // A high-density screen shows twice the pixels.
        assert_eq!(wanted(240.0, 180.0, 2.0).max_width, 480);
        assert_eq!(wanted(240.0, 180.0, 2.0).max_height, 384);
        // A few pixels' change asks for nothing new.
        assert_eq!(wanted(241.0, 181.0, 1.0), wanted(250.0, 190.0, 1.0));
    }

    #[test]
    fn a_hidden_tile_pauses() {
        assert!(wanted(0.0, 0.0, 1.0).paused);
        assert!(wanted(300.0, 0.0, 1.0).paused);
        assert!(wanted(f64::NAN, 100.0, 1.0).paused);
        // A nonsense ratio counts as 1.
        assert_eq!(wanted(100.0, 100.0, 0.0).max_width, 128);
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
