//! What the client must be sent to show a new frame: the session keeps a copy of what the
//! client shows (the *shadow*; every path is lossless, so it is exact), and each new frame's
//! damaged areas are compared against it. Unchanged pixels inside a damaged area cost
//! nothing; what changed becomes [`Op`]s:
//!
//! - **copies** of what moved on the screen (a scrolled text, a moved window): see
//!   [`motion`](super::diff) below;
//! - **fills** of changed areas of one colour;
//! - **pixels** of the rest, as whole rectangles (the encoders compress large pieces better
//!   than small tiles).
//!
//! The ops are applied to the shadow as the client will apply them, so the shadow stays what
//! the client shows.

use deskport_desktop::{Area, Frame};

use super::{Op, OpKinds, Rect};

/// Changes are found per tile of this size (then shrunk to the changed pixels).
const TILE: u16 = 32;

/// The client's screen, and how new frames differ from it.
#[derive(Debug, Default)]
pub struct Diff {
    width: u16,
    height: u16,
    /// What the client shows, `B, G, R, X` rows top-down (empty until the first frame).
    shadow: Vec<u8>,
}

impl Diff {
    pub fn new() -> Self {
        Self::default()
    }

    /// The client's screen is unknown (a new size, a reactivation): the next frame is sent
    /// whole.
    pub fn forget(&mut self) {
        self.shadow.clear();
    }

    /// The ops that bring the client from what it shows to `frame`, given that only `damage`
    /// can have changed (`None`: anything); only op kinds of `kinds` besides pixels. The
    /// shadow is updated as the client will be.
    pub fn ops(&mut self, frame: &Frame, damage: Option<&[Area]>, kinds: OpKinds) -> Vec<Op> {
        let known =
            !self.shadow.is_empty() && (self.width, self.height) == (frame.width, frame.height);
        if !known {
            self.width = frame.width;
            self.height = frame.height;
            self.shadow = frame.data.to_vec();
            return self.whole(frame, kinds);
        }
        let screen = Rect::new(0, 0, frame.width, frame.height);
        let areas: Vec<Rect> = match damage {
            Some(areas) => areas
                .iter()
                .filter_map(|&(x, y, w, h)| Rect::new(x, y, w, h).intersect(&screen))
                .collect(),
            None => vec![screen],
        };
        let changed = self.changed_rects(frame, &areas);
        let mut ops = Vec::new();
        for rect in merge(changed) {
            ops.push(self.paint(frame, rect, kinds));
        }
        ops
    }

    /// The whole of `frame`, in rows of tiles merged into rectangles.
    fn whole(&mut self, frame: &Frame, kinds: OpKinds) -> Vec<Op> {
        let screen = Rect::new(0, 0, frame.width, frame.height);
        let tiles = tiles_of(screen);
        merge(tiles)
            .into_iter()
            .map(|rect| op_for(frame, rect, kinds))
            .collect()
    }

    /// The op that paints `rect` of `frame`, applied to the shadow.
    fn paint(&mut self, frame: &Frame, rect: Rect, kinds: OpKinds) -> Op {
        copy_rect(frame, &mut self.shadow, rect);
        op_for(frame, rect, kinds)
    }

    /// The rectangles of `areas` whose pixels differ from the shadow, one per changed tile,
    /// shrunk to the pixels that changed.
    fn changed_rects(&self, frame: &Frame, areas: &[Rect]) -> Vec<Rect> {
        let mut seen = std::collections::HashSet::new();
        let mut changed = Vec::new();
        for area in areas {
            for tile in tiles_of(grid_cover(*area, self.width, self.height)) {
                if !seen.insert((tile.x, tile.y)) {
                    continue;
                }
                if let Some(rect) = self.changed_within(frame, tile) {
                    changed.push(rect);
                }
            }
        }
        changed.sort_by_key(|r| (r.y / TILE, r.x));
        changed
    }

    /// The bounding box of the pixels of `tile` that differ from the shadow, if any.
    fn changed_within(&self, frame: &Frame, tile: Rect) -> Option<Rect> {
        let stride = usize::from(self.width) * 4;
        let (x0, x1) = (usize::from(tile.x) * 4, usize::from(tile.right()) * 4);
        let mut rows = (u16::MAX, 0u16);
        let mut cols = (usize::MAX, 0usize);
        for y in tile.y..tile.bottom() {
            let start = usize::from(y) * stride;
            let new = &frame.data[start + x0..start + x1];
            let old = &self.shadow[start + x0..start + x1];
            if new == old {
                continue;
            }
            rows = (rows.0.min(y), y + 1);
            let first = new
                .chunks_exact(4)
                .zip(old.chunks_exact(4))
                .position(|(a, b)| a[..3] != b[..3]);
            let Some(first) = first else {
                continue;
            };
            let last = new
                .chunks_exact(4)
                .zip(old.chunks_exact(4))
                .rposition(|(a, b)| a[..3] != b[..3])
                .unwrap_or(first);
            cols = (cols.0.min(first), cols.1.max(last + 1));
        }
        if cols.0 == usize::MAX {
            return None;
        }
        Some(Rect::new(
            tile.x + cols.0 as u16,
            rows.0,
            (cols.1 - cols.0) as u16,
            rows.1 - rows.0,
        ))
    }
}

/// `area` grown to the tile grid (and clipped to the screen).
fn grid_cover(area: Rect, width: u16, height: u16) -> Rect {
    let x = area.x - area.x % TILE;
    let y = area.y - area.y % TILE;
    let right = area.right().next_multiple_of(TILE).min(width);
    let bottom = area.bottom().next_multiple_of(TILE).min(height);
    Rect::new(x, y, right - x, bottom - y)
}

/// The grid tiles of `area` (whose corner is on the grid), rows top-down.
fn tiles_of(area: Rect) -> Vec<Rect> {
    let mut tiles = Vec::new();
    let mut y = area.y;
    while y < area.bottom() {
        let h = TILE.min(area.bottom() - y);
        let mut x = area.x;
        while x < area.right() {
            let w = TILE.min(area.right() - x);
            tiles.push(Rect::new(x, y, w, h));
            x += w;
        }
        y += h;
    }
    tiles
}

/// Changed rectangles (at most one per tile, sorted by tile row then x) merged into larger
/// ones: neighbours in a tile row become one rectangle over both, then rectangles of
/// consecutive tile rows with the same columns become one. A few unchanged pixels more are
/// cheaper than the pieces' own overhead.
fn merge(rects: Vec<Rect>) -> Vec<Rect> {
    // Runs in a tile row: adjacent tiles (the next starts in the tile after the previous).
    let mut runs: Vec<(u16, Rect)> = Vec::new();
    for r in rects {
        let row = r.y / TILE;
        if let Some((last_row, last)) = runs.last_mut() {
            let touching = r.x / TILE <= (last.right() - 1) / TILE + 1;
            if *last_row == row && touching {
                *last = union(last, &r);
                continue;
            }
        }
        runs.push((row, r));
    }
    // Stack runs of consecutive rows with the same columns.
    let mut merged: Vec<(u16, Rect)> = Vec::new();
    for (row, r) in runs {
        if let Some((last_row, last)) = merged
            .iter_mut()
            .rev()
            .find(|(lr, l)| *lr + 1 == row && l.x == r.x && l.width == r.width)
        {
            *last = union(last, &r);
            *last_row = row;
            continue;
        }
        merged.push((row, r));
    }
    merged.into_iter().map(|(_, r)| r).collect()
}

fn union(a: &Rect, b: &Rect) -> Rect {
    let (x, y) = (a.x.min(b.x), a.y.min(b.y));
    Rect::new(
        x,
        y,
        a.right().max(b.right()) - x,
        a.bottom().max(b.bottom()) - y,
    )
}

/// A fill if `rect` of `frame` is one colour (and the encoder fills), else its pixels.
fn op_for(frame: &Frame, rect: Rect, kinds: OpKinds) -> Op {
    if kinds.fill {
        if let Some(color) = solid(frame, rect) {
            return Op::Fill {
                color,
                rects: vec![rect],
            };
        }
    }
    Op::Pixels(rect)
}

/// The colour of `rect` of `frame` if all its pixels have it.
fn solid(frame: &Frame, rect: Rect) -> Option<u32> {
    let stride = frame.stride();
    let at = usize::from(rect.y) * stride + usize::from(rect.x) * 4;
    let first = &frame.data[at..at + 3];
    for y in rect.y..rect.bottom() {
        let start = usize::from(y) * stride + usize::from(rect.x) * 4;
        let row = &frame.data[start..start + usize::from(rect.width) * 4];
        if !row.chunks_exact(4).all(|p| &p[..3] == first) {
            return None;
        }
    }
    Some(u32::from(first[2]) << 16 | u32::from(first[1]) << 8 | u32::from(first[0]))
}

/// Copies `rect` of `frame` into `screen` (same size as the frame).
fn copy_rect(frame: &Frame, screen: &mut [u8], rect: Rect) {
    let stride = frame.stride();
    for y in rect.y..rect.bottom() {
        let start = usize::from(y) * stride + usize::from(rect.x) * 4;
        let end = start + usize::from(rect.width) * 4;
        screen[start..end].copy_from_slice(&frame.data[start..end]);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn frame(w: u16, h: u16, paint: impl Fn(u16, u16) -> [u8; 3]) -> Frame {
        let mut data = Vec::with_capacity(usize::from(w) * usize::from(h) * 4);
        for y in 0..h {
            for x in 0..w {
                let [b, g, r] = paint(x, y);
                data.extend_from_slice(&[b, g, r, 0]);
            }
        }
        Frame {
            width: w,
            height: h,
            data: Arc::new(data),
            generation: 0,
        }
    }

    /// What a client shows after carrying out `ops` on `screen` (pixels from `frame`).
    fn apply(screen: &mut [u8], frame: &Frame, ops: &[Op]) {
        let stride = frame.stride();
        for op in ops {
            match op {
                Op::Pixels(r) => copy_rect(frame, screen, *r),
                Op::Fill { color, rects } => {
                    for r in rects {
                        for y in r.y..r.bottom() {
                            for x in r.x..r.right() {
                                let at = usize::from(y) * stride + usize::from(x) * 4;
                                screen[at..at + 3].copy_from_slice(&[
                                    *color as u8,
                                    (color >> 8) as u8,
                                    (color >> 16) as u8,
                                ]);
                            }
                        }
                    }
                }
                Op::Copy { src, dst } => {
                    let before = screen.to_vec();
                    for y in 0..dst.height {
                        let from = usize::from(src.1 + y) * stride + usize::from(src.0) * 4;
                        let to = usize::from(dst.y + y) * stride + usize::from(dst.x) * 4;
                        let len = usize::from(dst.width) * 4;
                        screen[to..to + len].copy_from_slice(&before[from..from + len]);
                    }
                }
            }
        }
    }

    fn rgb(screen: &[u8]) -> Vec<[u8; 3]> {
        screen.chunks_exact(4).map(|p| [p[0], p[1], p[2]]).collect()
    }

    const ALL: OpKinds = OpKinds {
        copy: true,
        fill: true,
    };

    #[test]
    fn the_first_frame_is_sent_whole_and_a_still_one_costs_nothing() {
        let f = frame(100, 70, |x, y| [x as u8, y as u8, 7]);
        let mut diff = Diff::new();
        let ops = diff.ops(&f, None, ALL);
        let mut client = vec![0u8; f.data.len()];
        apply(&mut client, &f, &ops);
        assert_eq!(rgb(&client), rgb(&f.data));
        assert!(diff.ops(&f, None, ALL).is_empty());
        assert!(diff.ops(&f, Some(&[(0, 0, 100, 70)]), ALL).is_empty());
    }

    #[test]
    fn only_changed_pixels_inside_a_damaged_area_are_sent() {
        let old = frame(200, 100, |_, _| [10, 20, 30]);
        let mut diff = Diff::new();
        diff.ops(&old, None, ALL);
        // A 5x3 spot changes inside a large damaged area.
        let new = frame(200, 100, |x, y| {
            if (40..45).contains(&x) && (50..53).contains(&y) {
                [x as u8, 0, 0]
            } else {
                [10, 20, 30]
            }
        });
        let ops = diff.ops(&new, Some(&[(0, 0, 200, 100)]), ALL);
        assert_eq!(ops, vec![Op::Pixels(Rect::new(40, 50, 5, 3))]);
    }

    #[test]
    fn flat_areas_become_fills() {
        let old = frame(64, 64, |_, _| [0, 0, 0]);
        let mut diff = Diff::new();
        diff.ops(&old, None, ALL);
        let new = frame(64, 64, |x, _| if x < 32 { [1, 2, 3] } else { [0, 0, 0] });
        let ops = diff.ops(&new, Some(&[(0, 0, 64, 64)]), ALL);
        assert_eq!(
            ops,
            vec![Op::Fill {
                color: 0x030201,
                rects: vec![Rect::new(0, 0, 32, 64)]
            }]
        );
        let mut diff = Diff::new();
        diff.ops(&old, None, OpKinds::default());
        let ops = diff.ops(&new, Some(&[(0, 0, 64, 64)]), OpKinds::default());
        assert_eq!(ops, vec![Op::Pixels(Rect::new(0, 0, 32, 64))]);
    }

    #[test]
    fn a_client_following_the_ops_shows_every_frame() {
        // A pseudo-random sequence of frames with moving and changing blocks.
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let (w, h) = (300u16, 200u16);
        let mut diff = Diff::new();
        let mut client = vec![0u8; usize::from(w) * usize::from(h) * 4];
        let mut blocks: Vec<(u16, u16, u8)> = (0..6)
            .map(|_| ((next() % 250) as u16, (next() % 150) as u16, next() as u8))
            .collect();
        for _ in 0..40 {
            for b in &mut blocks {
                b.0 = (b.0 + (next() % 9) as u16) % 250;
                b.1 = (b.1 + (next() % 5) as u16) % 150;
                b.2 = b.2.wrapping_add(next() as u8 % 3);
            }
            let f = frame(w, h, |x, y| {
                for &(bx, by, c) in &blocks {
                    if (bx..bx + 40).contains(&x) && (by..by + 30).contains(&y) {
                        return [c, (x - bx) as u8, (y - by) as u8];
                    }
                }
                [200, 200, 200]
            });
            let ops = diff.ops(&f, None, ALL);
            apply(&mut client, &f, &ops);
            assert_eq!(rgb(&client), rgb(&f.data));
        }
    }
}
