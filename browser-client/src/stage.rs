//! Where each remote video tile goes on the meeting screen: a grid that
//! pages (no more tiles drawn than fit at a legible size), or a speaker view
//! (one tile large, a strip of the others); a pinned tile is the large one.
//! A tile that is not drawn has no size, so the page pauses its track
//! (`quality`): paging is also what keeps a large meeting affordable. Pure,
//! so it is tested natively.

/// The narrowest tile worth drawing, CSS pixels (16:9): a face is still
/// a face at 160×90.
pub const MIN_TILE_WIDTH: f64 = 160.0;
/// Space between tiles, CSS pixels.
pub const GAP: f64 = 12.0;

/// How the stage lays tiles out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Equal tiles, a page at a time.
    #[default]
    Grid,
    /// One tile large (the pinned one, else the dominant speaker's), the
    /// others small in a strip, a page at a time.
    Speaker,
}

/// Where one tile goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// The large tile of the speaker view.
    Main,
    /// A small tile beside the large one.
    Strip,
    /// A tile of the grid.
    Grid,
    /// On another page: not drawn, its track paused.
    Hidden,
}

impl Place {
    /// The value of the tile's `data-place`.
    pub fn name(self) -> &'static str {
        match self {
            Place::Main => "main",
            Place::Strip => "strip",
            Place::Grid => "grid",
            Place::Hidden => "hidden",
        }
    }
}

/// The stage's layout: a place per tile (in the order given), the order to
/// draw them in, and the pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arrangement {
    /// Per tile, in the order given.
    pub places: Vec<Place>,
    /// Indexes of the tiles in drawing order (the large one first).
    pub order: Vec<usize>,
    /// The page shown, from 0 (clamped to the pages there are).
    pub page: usize,
    /// Pages in all (at least 1).
    pub pages: usize,
}

/// How many tiles of at least [`MIN_TILE_WIDTH`] fit a stage of
/// `width`×`height` CSS pixels (at least 1).
pub fn capacity(width: f64, height: f64) -> usize {
    let fit = |space: f64, tile: f64| {
        if space.is_finite() && space > 0.0 {
            ((space + GAP) / (tile + GAP)).floor().max(1.0) as usize
        } else {
            1
        }
    };
    fit(width, MIN_TILE_WIDTH) * fit(height, MIN_TILE_WIDTH * 9.0 / 16.0)
}

/// Widest tile shape: the pictures cameras and screens mostly send.
pub const WIDEST: f64 = 16.0 / 9.0;
/// Narrowest tile shape: a 4:3 camera, letterboxed a little if 16:9.
pub const NARROWEST: f64 = 4.0 / 3.0;

/// The grid that shows `n` equal tiles largest in a stage of
/// `width`×`height`: columns and rows, and each tile's size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fit {
    /// Tiles a row.
    pub cols: usize,
    /// Rows.
    pub rows: usize,
    /// A tile's width, CSS pixels.
    pub width: f64,
    /// A tile's height, CSS pixels.
    pub height: f64,
}

/// The columns, rows and tile size that give `n` tiles the most of a stage
/// of `width`×`height`, with tiles between [`NARROWEST`] and [`WIDEST`] in
/// shape (a cell of another shape gives up its excess): every column count
/// is tried, which for the tiles of one page is a handful.
pub fn fit(n: usize, width: f64, height: f64) -> Fit {
    let n = n.max(1);
    let (width, height) = (width.max(1.0), height.max(1.0));
    let mut best = Fit {
        cols: 1,
        rows: n,
        width: 0.0,
        height: 0.0,
    };
    for cols in 1..=n {
        let rows = n.div_ceil(cols);
        let cell_w = (width - GAP * (cols - 1) as f64) / cols as f64;
        let cell_h = (height - GAP * (rows - 1) as f64) / rows as f64;
        if cell_w <= 0.0 || cell_h <= 0.0 {
            continue;
        }
        // The cell's shape, brought within the range by trimming a side.
        let (w, h) = if cell_w / cell_h > WIDEST {
            (cell_h * WIDEST, cell_h)
        } else if cell_w / cell_h < NARROWEST {
            (cell_w, cell_w / NARROWEST)
        } else {
            (cell_w, cell_h)
        };
        if w * h > best.width * best.height {
            best = Fit {
                cols,
                rows,
                width: w.floor(),
                height: h.floor(),
            };
        }
    }
    best
}

/// Lays out `tiles` (each its participant) for a page of `per_page` tiles:
/// the pinned tile, else (in speaker mode) the dominant speaker's, else
/// the first, is the large one in speaker mode and first in the grid.
pub fn arrange(
    tiles: &[u32],
    pinned: Option<usize>,
    dominant: Option<u32>,
    mode: Mode,
    page: usize,
    per_page: usize,
) -> Arrangement {
    let per_page = per_page.max(1);
    let lead = pinned.filter(|&i| i < tiles.len()).or_else(|| {
        (mode == Mode::Speaker)
            .then(|| dominant.and_then(|d| tiles.iter().position(|p| *p == d)))
            .flatten()
            .or((!tiles.is_empty() && mode == Mode::Speaker).then_some(0))
    });
    let mut order: Vec<usize> = lead.into_iter().collect();
    order.extend((0..tiles.len()).filter(|i| Some(*i) != lead));
    let mut places = vec![Place::Hidden; tiles.len()];
    // In speaker view the large tile is always there; the strip pages.
    let (fixed, rest, place) = match mode {
        Mode::Speaker => (1, &order[order.len().min(1)..], Place::Strip),
        Mode::Grid => (0, &order[..], Place::Grid),
    };
    let strip = if mode == Mode::Speaker {
        per_page.saturating_sub(1).max(1)
    } else {
        per_page
    };
    let pages = rest.len().div_ceil(strip).max(1);
    let page = page.min(pages - 1);
    for &i in rest.iter().skip(page * strip).take(strip) {
        places[i] = place;
    }
    if fixed == 1
        && let Some(&i) = order.first()
    {
        places[i] = Place::Main;
    }
    Arrangement {
        places,
        order,
        page,
        pages,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(a: &Arrangement, p: Place) -> usize {
        a.places.iter().filter(|x| **x == p).count()
    }

    #[test]
    fn capacity_counts_legible_tiles() {
        // 4 columns of 160 (+ gaps) and 3 rows of 90 in 800x300.
        assert_eq!(capacity(800.0, 300.0), 12);
        assert_eq!(capacity(100.0, 50.0), 1);
        assert_eq!(capacity(f64::NAN, 0.0), 1);
        assert_eq!(capacity(1408.0, 700.0), 8 * 6);
    }

    /// The share of a `width`×`height` stage that `n` tiles of `f` cover.
    fn covered(f: Fit, n: usize, width: f64, height: f64) -> f64 {
        n as f64 * f.width * f.height / (width * height)
    }

    #[test]
    fn the_grid_fills_a_large_stage_for_any_count() {
        // A 1440x900 window less its bars.
        let (w, h) = (1424.0, 772.0);
        for n in 2..=9 {
            let f = fit(n, w, h);
            assert!(f.cols * f.rows >= n, "{n}: {f:?}");
            assert!(
                covered(f, n, w, h) >= 0.6,
                "{n}: {:.2} {f:?}",
                covered(f, n, w, h)
            );
            // It fits.
            assert!(f.cols as f64 * f.width + (f.cols - 1) as f64 * GAP <= w);
            assert!(f.rows as f64 * f.height + (f.rows - 1) as f64 * GAP <= h);
            let shape = f.width / f.height;
            assert!(
                (NARROWEST - 0.01..=WIDEST + 0.01).contains(&shape),
                "{n}: {shape}"
            );
        }
        // One alone is as large as the stage allows at 16:9.
        let one = fit(1, w, h);
        assert_eq!((one.cols, one.rows), (1, 1));
        assert_eq!(one.height, h);
        // Four make two rows of two; sixteen four of four, none under 160 wide.
        assert_eq!((fit(4, w, h).cols, fit(4, w, h).rows), (2, 2));
        let many = fit(16, w, h);
        assert_eq!((many.cols, many.rows), (4, 4));
        assert!(many.width >= 160.0);
        // A phone stacks them.
        let phone = fit(3, 344.0, 600.0);
        assert_eq!(phone.cols, 1);
        // Nonsense sizes still give a grid.
        assert_eq!(fit(0, f64::NAN, -5.0).cols, 1);
    }

    #[test]
    fn the_grid_pages_and_never_draws_more_than_fit() {
        let tiles = [10, 11, 12, 13, 14];
        let a = arrange(&tiles, None, None, Mode::Grid, 0, 3);
        assert_eq!(a.pages, 2);
        assert_eq!(a.places[..3], [Place::Grid; 3]);
        assert_eq!(a.places[3..], [Place::Hidden; 2]);
        let b = arrange(&tiles, None, None, Mode::Grid, 1, 3);
        assert_eq!(b.places[..3], [Place::Hidden; 3]);
        assert_eq!(b.places[3..], [Place::Grid; 2]);
        // Past the last page: the last page.
        assert_eq!(arrange(&tiles, None, None, Mode::Grid, 9, 3).page, 1);
        assert_eq!(arrange(&[], None, None, Mode::Grid, 0, 3).pages, 1);
    }

    #[test]
    fn a_pinned_tile_comes_first_in_the_grid_and_is_large_in_the_speaker_view() {
        let tiles = [10, 11, 12, 13, 14];
        let a = arrange(&tiles, Some(4), Some(11), Mode::Grid, 0, 3);
        assert_eq!(a.order[0], 4);
        assert_eq!(a.places[4], Place::Grid);
        assert_eq!(count(&a, Place::Grid), 3);
        let s = arrange(&tiles, Some(4), Some(11), Mode::Speaker, 0, 3);
        assert_eq!(s.places[4], Place::Main);
        assert_eq!(count(&s, Place::Main), 1);
        assert_eq!(count(&s, Place::Strip), 2);
        assert_eq!(s.pages, 2);
    }

    #[test]
    fn the_speaker_view_follows_the_dominant_speaker_unless_pinned() {
        let tiles = [10, 11, 12];
        let s = arrange(&tiles, None, Some(12), Mode::Speaker, 0, 4);
        assert_eq!(s.places, [Place::Strip, Place::Strip, Place::Main]);
        assert_eq!(s.order, [2, 0, 1]);
        // Nobody speaks: the first tile.
        let s = arrange(&tiles, None, None, Mode::Speaker, 0, 4);
        assert_eq!(s.places[0], Place::Main);
        // A speaker without a camera tile: the first.
        let s = arrange(&tiles, None, Some(99), Mode::Speaker, 0, 4);
        assert_eq!(s.places[0], Place::Main);
    }
}
