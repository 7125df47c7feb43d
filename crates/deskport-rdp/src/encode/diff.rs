//! What the client must be sent to show a new frame: the session keeps a copy of what the
//! client shows (the *shadow*; every path is lossless, so it is exact), and each new frame's
//! damaged areas are compared against it. Unchanged pixels inside a damaged area cost
//! nothing; what changed becomes [`Op`]s:
//!
//! - **copies** of what moved on the screen (a scrolled text, a moved window): changed tiles
//!   whose new pixels equal what the client shows at some offset. Offsets come from the
//!   previous frame (things keep moving the way they moved) and from a search: a short row of
//!   a changed tile is looked for in what the client shows within ±[`SEARCH`] pixels, and the
//!   offsets found vote. Each candidate is checked on whole tiles (then on the changed part of
//!   a tile), so a copy is only sent where it gives exactly the new pixels;
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

/// How far (pixels, each way) the search looks for where changed content came from.
const SEARCH: i32 = 48;

/// The block searched for: at most this wide and high (rows of text repeat; a block that
/// spans several rows of it is found in one place).
const ANCHOR: (u16, u16) = (32, 16);

/// Rows searched for per frame at most (each costs one sweep of the search window).
const MAX_ANCHORS: usize = 48;

/// Offsets tried per frame at most.
const MAX_CANDIDATES: usize = 8;

/// A motion: where content moved, `(dx, dy)`.
type Offset = (i32, i32);

/// The client's screen, and how new frames differ from it.
#[derive(Debug, Default)]
pub struct Diff {
    width: u16,
    height: u16,
    /// What the client shows, `B, G, R, X` rows top-down (empty until the first frame).
    shadow: Vec<u8>,
    /// The offsets of the last frame's copies.
    recent: Vec<Offset>,
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
        let tiles = self.damaged_tiles(&areas);
        let mut changed: Vec<(Rect, Rect)> = tiles
            .iter()
            .filter_map(|t| self.changed_within(frame, *t).map(|c| (*t, c)))
            .collect();
        let mut ops = Vec::new();
        if kinds.copy && !changed.is_empty() {
            ops = self.copies(frame, &changed);
            if !ops.is_empty() {
                // What the copies did not get right (or at all) is sent as it is.
                changed = changed
                    .iter()
                    .filter_map(|(t, _)| self.changed_within(frame, *t).map(|c| (*t, c)))
                    .collect();
            }
        }
        for rect in merge(changed.into_iter().map(|(_, c)| c).collect()) {
            ops.push(self.paint(frame, rect, kinds));
        }
        ops
    }

    /// Copies of content that moved: for each candidate offset, the changed tiles whose new
    /// pixels are what the client shows at that offset (whole tiles merged into rectangles,
    /// else the changed part of a tile), ordered so that no copy overwrites what a later one
    /// reads where that can be avoided, and applied to the shadow.
    fn copies(&mut self, frame: &Frame, changed: &[(Rect, Rect)]) -> Vec<Op> {
        let candidates = self.candidates(frame, changed);
        let mut resolved = vec![false; changed.len()];
        let mut copies = Vec::new();
        let mut used = Vec::new();
        for d in candidates {
            let (mut whole, mut parts) = (Vec::new(), Vec::new());
            for (i, (tile, part)) in changed.iter().enumerate() {
                if resolved[i] {
                    continue;
                }
                if self.moved(frame, *tile, d) {
                    whole.push(*tile);
                } else if part != tile && self.moved(frame, *part, d) {
                    parts.push(*part);
                } else {
                    continue;
                }
                resolved[i] = true;
            }
            if whole.is_empty() && parts.is_empty() {
                continue;
            }
            used.push(d);
            for dst in merge(whole).into_iter().chain(parts) {
                let src = (
                    (i32::from(dst.x) - d.0) as u16,
                    (i32::from(dst.y) - d.1) as u16,
                );
                copies.push((src, dst));
            }
        }
        self.recent = used;
        let ordered = order(copies);
        for &(src, dst) in &ordered {
            self.copy_in_shadow(src, dst);
        }
        ordered
            .into_iter()
            .map(|(src, dst)| Op::Copy { src, dst })
            .collect()
    }

    /// Offsets to try: the last frame's, then those the search finds most often.
    fn candidates(&self, frame: &Frame, changed: &[(Rect, Rect)]) -> Vec<Offset> {
        let mut candidates = self.recent.clone();
        let mut votes: std::collections::HashMap<Offset, usize> = Default::default();
        let step = changed.len().div_ceil(MAX_ANCHORS).max(1);
        for (_, part) in changed.iter().step_by(step) {
            let Some(found) = self.search(frame, *part) else {
                continue;
            };
            for d in found {
                *votes.entry(d).or_default() += 1;
            }
        }
        let mut voted: Vec<(Offset, usize)> = votes.into_iter().collect();
        voted.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        for (d, _) in voted {
            if candidates.len() >= MAX_CANDIDATES {
                break;
            }
            if !candidates.contains(&d) {
                candidates.push(d);
            }
        }
        candidates
    }

    /// Where a block of `part`'s new pixels (its top-left corner, up to [`ANCHOR`]) is found
    /// in what the client shows within ±[`SEARCH`]; `None` for a flat block (it matches
    /// anywhere) or one found in too many places to tell.
    fn search(&self, frame: &Frame, part: Rect) -> Option<Vec<Offset>> {
        let block = Rect::new(
            part.x,
            part.y,
            ANCHOR.0.min(part.width),
            ANCHOR.1.min(part.height),
        );
        if block.width < 8 || block.height < 4 {
            return None;
        }
        let stride = usize::from(self.width) * 4;
        let at = usize::from(block.y) * stride + usize::from(block.x) * 4;
        let first_row = &frame.data[at..at + usize::from(block.width) * 4];
        if solid(frame, block).is_some() {
            return None;
        }
        let head = u64::from_le_bytes(first_row[..8].try_into().ok()?) & 0x00ff_ffff_00ff_ffff;
        let mut found = Vec::new();
        for dy in -SEARCH..=SEARCH {
            let sy = i32::from(block.y) - dy;
            if sy < 0 || sy + i32::from(block.height) > i32::from(self.height) {
                continue;
            }
            let line = sy as usize * stride;
            for dx in -SEARCH..=SEARCH {
                let sx = i32::from(block.x) - dx;
                if (dx, dy) == (0, 0)
                    || sx < 0
                    || sx + i32::from(block.width) > i32::from(self.width)
                {
                    continue;
                }
                let from = line + sx as usize * 4;
                let first = u64::from_le_bytes(self.shadow[from..from + 8].try_into().ok()?);
                if first & 0x00ff_ffff_00ff_ffff != head || !self.moved(frame, block, (dx, dy)) {
                    continue;
                }
                found.push((dx, dy));
                if found.len() > 4 {
                    return None;
                }
            }
        }
        Some(found)
    }

    /// Whether `rect` of `frame` is what the client shows at `rect` moved back by `d`.
    fn moved(&self, frame: &Frame, rect: Rect, d: Offset) -> bool {
        let (sx, sy) = (i32::from(rect.x) - d.0, i32::from(rect.y) - d.1);
        if sx < 0
            || sy < 0
            || sx + i32::from(rect.width) > i32::from(self.width)
            || sy + i32::from(rect.height) > i32::from(self.height)
        {
            return false;
        }
        let stride = usize::from(self.width) * 4;
        let len = usize::from(rect.width) * 4;
        (0..usize::from(rect.height)).all(|row| {
            let new = (usize::from(rect.y) + row) * stride + usize::from(rect.x) * 4;
            let old = (sy as usize + row) * stride + sx as usize * 4;
            same_pixels(&frame.data[new..new + len], &self.shadow[old..old + len])
        })
    }

    /// Carries out a copy on the shadow as a client does (overlap-safe).
    fn copy_in_shadow(&mut self, src: (u16, u16), dst: Rect) {
        let stride = usize::from(self.width) * 4;
        let len = usize::from(dst.width) * 4;
        let rows: Vec<u8> = (0..usize::from(dst.height))
            .flat_map(|row| {
                let from = (usize::from(src.1) + row) * stride + usize::from(src.0) * 4;
                self.shadow[from..from + len].iter().copied()
            })
            .collect();
        for (row, pixels) in rows.chunks_exact(len).enumerate() {
            let to = (usize::from(dst.y) + row) * stride + usize::from(dst.x) * 4;
            self.shadow[to..to + len].copy_from_slice(pixels);
        }
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

    /// The grid tiles that cover `areas`, each once, rows top-down.
    fn damaged_tiles(&self, areas: &[Rect]) -> Vec<Rect> {
        let mut seen = std::collections::HashSet::new();
        let mut tiles: Vec<Rect> = areas
            .iter()
            .flat_map(|area| tiles_of(grid_cover(*area, self.width, self.height)))
            .filter(|t| seen.insert((t.x, t.y)))
            .collect();
        tiles.sort_by_key(|t| (t.y, t.x));
        tiles
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
            let first = new
                .chunks_exact(4)
                .zip(old.chunks_exact(4))
                .position(|(a, b)| a[..3] != b[..3]);
            let Some(first) = first else {
                continue;
            };
            rows = (rows.0.min(y), y + 1);
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

/// Whether two rows of pixels are equal (the padding byte of each pixel aside).
fn same_pixels(a: &[u8], b: &[u8]) -> bool {
    a.chunks_exact(4)
        .zip(b.chunks_exact(4))
        .all(|(p, q)| p[..3] == q[..3])
}

/// `copies` (source corner, destination) in an order where, as far as possible, no copy
/// writes where a later one reads (a cycle is left as it is: the residual diff corrects it).
fn order(mut copies: Vec<((u16, u16), Rect)>) -> Vec<((u16, u16), Rect)> {
    let source = |(src, dst): &((u16, u16), Rect)| Rect::new(src.0, src.1, dst.width, dst.height);
    let mut ordered = Vec::with_capacity(copies.len());
    while !copies.is_empty() {
        let next = (0..copies.len())
            .find(|&i| {
                copies
                    .iter()
                    .enumerate()
                    .all(|(j, other)| j == i || copies[i].1.intersect(&source(other)).is_none())
            })
            .unwrap_or(0);
        ordered.push(copies.remove(next));
    }
    ordered
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

    /// Pixels in `ops` that are sent as pixels.
    fn pixels_sent(ops: &[Op]) -> usize {
        ops.iter()
            .map(|op| match op {
                Op::Pixels(r) => usize::from(r.width) * usize::from(r.height),
                _ => 0,
            })
            .sum()
    }

    /// Some text-like content: glyph-sized blocks of two colours in `seed`'s pattern.
    fn text(x: u16, y: u16, seed: u16) -> [u8; 3] {
        let cell = (x / 6).wrapping_mul(7) ^ (y / 12).wrapping_mul(13) ^ seed;
        if (x % 6 < 4) && (y % 12 < 9) && !(cell.wrapping_mul(2654) >> 7).is_multiple_of(3) {
            [20, 20, 20]
        } else {
            [240, 240, 230]
        }
    }

    #[test]
    fn a_scrolled_text_is_copied_and_only_the_new_line_is_sent() {
        let (w, h) = (400u16, 300u16);
        // Lines of text in a box from y 40 to 280; each frame scrolls it up 4 pixels.
        let page = |offset: u16| {
            frame(w, h, move |x, y| {
                if (40..280).contains(&y) && (20..380).contains(&x) {
                    text(x - 20, y - 40 + offset, 3)
                } else {
                    [90, 60, 30]
                }
            })
        };
        let mut diff = Diff::new();
        let mut client = vec![0u8; usize::from(w) * usize::from(h) * 4];
        let first = page(0);
        apply(&mut client, &first, &diff.ops(&first, None, ALL));
        for n in 1..6 {
            let f = page(n * 4);
            let ops = diff.ops(&f, Some(&[(20, 40, 360, 240)]), ALL);
            apply(&mut client, &f, &ops);
            assert_eq!(rgb(&client), rgb(&f.data));
            assert!(
                ops.iter()
                    .any(|op| matches!(op, Op::Copy { src, dst } if src.1 == dst.y + 4)),
                "{ops:?}"
            );
            // Only the rows that scrolled in (and tile edges) go as pixels.
            assert!(pixels_sent(&ops) <= 360 * 40, "{}", pixels_sent(&ops));
        }
    }

    #[test]
    fn moving_blocks_are_copied() {
        let (w, h) = (480u16, 320u16);
        // A patch of noise sliding right 8 px a frame and a text block moving diagonally.
        let noise = |x: u16, y: u16| {
            let v = u32::from(x).wrapping_mul(2_654_435_761) ^ u32::from(y).wrapping_mul(40_503);
            let v = v ^ (v >> 13);
            [v as u8, (v >> 8) as u8, (v >> 16) as u8]
        };
        let scene = |n: u16| {
            frame(w, h, move |x, y| {
                let (nx, ny) = (40 + n * 8, 150);
                if (nx..nx + 128).contains(&x) && (ny..ny + 128).contains(&y) {
                    return noise(x - nx, y - ny);
                }
                let (bx, by) = (200 + n * 5, 20 + n * 3);
                if (bx..bx + 100).contains(&x) && (by..by + 60).contains(&y) {
                    return text(x - bx, y - by, 9);
                }
                [10, 80, 160]
            })
        };
        let mut diff = Diff::new();
        let mut client = vec![0u8; usize::from(w) * usize::from(h) * 4];
        let first = scene(0);
        apply(&mut client, &first, &diff.ops(&first, None, ALL));
        for n in 1..8 {
            let f = scene(n);
            let ops = diff.ops(&f, None, ALL);
            apply(&mut client, &f, &ops);
            assert_eq!(rgb(&client), rgb(&f.data), "frame {n}");
            // Without copies each frame would send both blocks (16k + 6k pixels).
            assert!(
                pixels_sent(&ops) < 4_000,
                "frame {n}: {} {ops:?}",
                pixels_sent(&ops)
            );
        }
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
