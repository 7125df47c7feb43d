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

use crate::{Area, Frame};

/// A rectangle of the screen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rect {
    pub x: u16,
    pub y: u16,
    pub width: u16,
    pub height: u16,
}

impl Rect {
    pub fn new(x: u16, y: u16, width: u16, height: u16) -> Self {
        Self {
            x,
            y,
            width,
            height,
        }
    }

    pub fn right(&self) -> u16 {
        self.x + self.width
    }

    pub fn bottom(&self) -> u16 {
        self.y + self.height
    }

    pub fn is_empty(&self) -> bool {
        self.width == 0 || self.height == 0
    }

    /// The pixels both rectangles cover, if any.
    pub fn intersect(&self, other: &Rect) -> Option<Rect> {
        let (x, y) = (self.x.max(other.x), self.y.max(other.y));
        let (r, b) = (
            self.right().min(other.right()),
            self.bottom().min(other.bottom()),
        );
        (x < r && y < b).then(|| Rect::new(x, y, r - x, b - y))
    }
}

/// One step that brings the client's screen closer to a new frame. A frame's ops are applied
/// in order, each on the screen as the ones before it left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Copy what the client shows at `src` (the top-left corner of a rectangle the size of
    /// `dst`) to `dst`; source and destination may overlap.
    Copy { src: (u16, u16), dst: Rect },
    /// Fill `rects` with `color` (`0x00RRGGBB`).
    Fill { color: u32, rects: Vec<Rect> },
    /// The new frame's pixels of `rect`.
    Pixels(Rect),
}

/// Which ops an encoder sends as such; the others it is given as [`Op::Pixels`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OpKinds {
    pub copy: bool,
    pub fill: bool,
}

/// Changes are found per tile of this size (then shrunk to the changed pixels).
const TILE: u16 = 32;

/// How far (pixels, each way) the search looks for where changed content came from.
const SEARCH: i32 = 48;

/// The block searched for: at most this wide and high (rows of text repeat; a block that
/// spans several rows of it is found in one place).
const ANCHOR: (u16, u16) = (32, 16);

/// Rows searched for per frame at most (each costs one sweep of the search window). On the
/// heavy workload (`benches/replay.rs`) 16 instead of 64 costs 1% more bytes and saves 40% of
/// the diff's and encoder's CPU (5.6 to 3.5 ms a frame): what moves, moves in few ways, and
/// the last frame's offsets are tried before any search.
const MAX_ANCHORS: usize = 16;

/// Offsets tried per frame at most.
const MAX_CANDIDATES: usize = 12;

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
        let parts: Vec<Rect> = changed.into_iter().map(|(_, c)| c).collect();
        for part in &parts {
            copy_rect(frame, &mut self.shadow, *part);
        }
        ops.extend(paint(frame, parts, kinds));
        ops
    }

    /// Copies of content that moved: for each candidate offset, the changed tiles whose new
    /// pixels are what the client shows at that offset (whole tiles merged into rectangles,
    /// else the changed part of a tile), ordered so that no copy overwrites what a later one
    /// reads where that can be avoided, and applied to the shadow.
    fn copies(&mut self, frame: &Frame, changed: &[(Rect, Rect)]) -> Vec<Op> {
        let mut resolved = vec![false; changed.len()];
        let mut copies = Vec::new();
        let mut used = Vec::new();
        // Things keep moving the way they moved: the last frame's offsets first, then what
        // the search finds for the tiles they do not explain.
        let recent = std::mem::take(&mut self.recent);
        for d in recent {
            self.try_offset(frame, changed, &mut resolved, d, &mut copies, &mut used);
        }
        for d in self.candidates(frame, changed, &resolved) {
            if !used.contains(&d) {
                self.try_offset(frame, changed, &mut resolved, d, &mut copies, &mut used);
            }
        }
        // A tile of something that moved and also changed (a moved window whose text changed
        // too): copied where that leaves less than half of its change to send.
        for &d in &used.clone() {
            self.try_nearly(frame, changed, &mut resolved, d, &mut copies);
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

    /// Copies for the unresolved changed tiles that offset `d` explains (whole tiles merged,
    /// else the changed part of a tile).
    fn try_offset(
        &self,
        frame: &Frame,
        changed: &[(Rect, Rect)],
        resolved: &mut [bool],
        d: Offset,
        copies: &mut Vec<((u16, u16), Rect)>,
        used: &mut Vec<Offset>,
    ) {
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
            return;
        }
        used.push(d);
        let whole = self.fill_gaps(frame, whole, d);
        let parts = self.merge_parts(frame, parts, d);
        for dst in merge(whole).into_iter().chain(parts) {
            let src = (
                (i32::from(dst.x) - d.0) as u16,
                (i32::from(dst.y) - d.1) as u16,
            );
            copies.push((src, dst));
        }
    }

    /// `parts` (changed parts of tiles a copy by `d` gets right, sorted by tile row then x)
    /// as fewer copies: neighbours in a row with the same top and height become one where
    /// they touch, or where the copy gets the gap between them right too; then runs of the
    /// same columns that touch vertically. (A moved rectangle's edge is a part per tile.)
    fn merge_parts(&self, frame: &Frame, parts: Vec<Rect>, d: Offset) -> Vec<Rect> {
        let mut rows: Vec<Rect> = Vec::with_capacity(parts.len());
        for part in parts {
            if let Some(last) = rows.last_mut() {
                let joinable = last.y == part.y
                    && last.height == part.height
                    && part.x >= last.right()
                    && part.x - last.right() <= TILE;
                if joinable {
                    let both = union(last, &part);
                    if part.x == last.right() || self.moved(frame, both, d) {
                        *last = both;
                        continue;
                    }
                }
            }
            rows.push(part);
        }
        let mut out: Vec<Rect> = Vec::with_capacity(rows.len());
        for r in rows {
            if let Some(above) = out
                .iter_mut()
                .rev()
                .find(|a| a.x == r.x && a.width == r.width && a.bottom() == r.y)
            {
                *above = union(above, &r);
                continue;
            }
            out.push(r);
        }
        out
    }

    /// `tiles` (whole tiles a copy by `d` gets right, sorted by row then x) with the tiles
    /// between two of them in a row added where the copy gets those right too (unchanged
    /// tiles inside a moved window): fewer, larger copies.
    fn fill_gaps(&self, frame: &Frame, tiles: Vec<Rect>, d: Offset) -> Vec<Rect> {
        let mut out: Vec<Rect> = Vec::with_capacity(tiles.len());
        for tile in tiles {
            if let Some(last) = out.last().copied() {
                if last.y == tile.y && last.right() < tile.x {
                    let gap: Vec<Rect> = (last.right() / TILE..tile.x / TILE)
                        .map(|i| Rect::new(i * TILE, tile.y, TILE, last.height))
                        .collect();
                    if gap.iter().all(|g| self.moved(frame, *g, d)) {
                        out.extend(gap);
                    }
                }
            }
            out.push(tile);
        }
        out
    }

    /// Copies of unresolved changed tiles that offset `d` gets nearly right: the pixels that
    /// still differ after the copy fit in less than half the tile's changed part.
    fn try_nearly(
        &self,
        frame: &Frame,
        changed: &[(Rect, Rect)],
        resolved: &mut [bool],
        d: Offset,
        copies: &mut Vec<((u16, u16), Rect)>,
    ) {
        let mut whole = Vec::new();
        for (i, (tile, part)) in changed.iter().enumerate() {
            if resolved[i] {
                continue;
            }
            let Some(left) = self.differs_after(frame, *tile, d) else {
                continue;
            };
            let area = |r: &Rect| usize::from(r.width) * usize::from(r.height);
            if left.is_none_or(|l| area(&l) * 2 < area(part)) {
                whole.push(*tile);
                resolved[i] = true;
            }
        }
        for dst in merge(whole) {
            let src = (
                (i32::from(dst.x) - d.0) as u16,
                (i32::from(dst.y) - d.1) as u16,
            );
            copies.push((src, dst));
        }
    }

    /// The bounding box of the pixels of `rect` that a copy by `d` would still get wrong
    /// (`Some(None)`: none); `None` if the source is off the screen.
    fn differs_after(&self, frame: &Frame, rect: Rect, d: Offset) -> Option<Option<Rect>> {
        let (sx, sy) = self.source(rect, d)?;
        let stride = usize::from(self.width) * 4;
        let len = usize::from(rect.width) * 4;
        let mut rows = (u16::MAX, 0u16);
        let mut cols = (usize::MAX, 0usize);
        for row in 0..rect.height {
            let new = (usize::from(rect.y + row)) * stride + usize::from(rect.x) * 4;
            let old = (sy + usize::from(row)) * stride + sx * 4;
            let (a, b) = (&frame.data[new..new + len], &self.shadow[old..old + len]);
            if a == b {
                continue;
            }
            let differ = |(p, q): (&[u8], &[u8])| p[..3] != q[..3];
            let pairs = || a.chunks_exact(4).zip(b.chunks_exact(4));
            let Some(first) = pairs().position(differ) else {
                continue;
            };
            let last = pairs().rposition(differ).unwrap_or(first);
            rows = (rows.0.min(row), row + 1);
            cols = (cols.0.min(first), cols.1.max(last + 1));
        }
        if cols.0 == usize::MAX {
            return Some(None);
        }
        Some(Some(Rect::new(
            rect.x + cols.0 as u16,
            rect.y + rows.0,
            (cols.1 - cols.0) as u16,
            rows.1 - rows.0,
        )))
    }

    /// Offsets the search finds for unresolved changed tiles, most often found first.
    fn candidates(
        &self,
        frame: &Frame,
        changed: &[(Rect, Rect)],
        resolved: &[bool],
    ) -> Vec<Offset> {
        let open: Vec<&Rect> = changed
            .iter()
            .zip(resolved)
            .filter(|(_, done)| !**done)
            .map(|((_, part), _)| part)
            .collect();
        let mut votes: std::collections::HashMap<Offset, usize> = Default::default();
        let step = open.len().div_ceil(MAX_ANCHORS).max(1);
        for part in open.into_iter().step_by(step) {
            let Some(found) = self.search(frame, *part) else {
                continue;
            };
            for d in found {
                *votes.entry(d).or_default() += 1;
            }
        }
        let mut voted: Vec<(Offset, usize)> = votes.into_iter().collect();
        voted.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        voted
            .into_iter()
            .take(MAX_CANDIDATES)
            .map(|(d, _)| d)
            .collect()
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
        if block.width < 8 || block.height < 4 || solid(frame, block).is_some() {
            return None;
        }
        // Three probes of two pixels each (top left, middle, bottom right) sift the positions
        // before a whole block is compared.
        let stride = usize::from(self.width) * 4;
        let probes: [(usize, usize); 3] = [
            (0, 0),
            (
                usize::from(block.width / 2 - 1),
                usize::from(block.height / 2),
            ),
            (usize::from(block.width - 2), usize::from(block.height - 1)),
        ];
        let pixel_pair = |data: &[u8], x: usize, y: usize| -> u64 {
            let at = y * stride + x * 4;
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&data[at..at + 8]);
            u64::from_le_bytes(bytes)
        };
        let (bx, by) = (usize::from(block.x), usize::from(block.y));
        let want = probes.map(|(px, py)| pixel_pair(&frame.data, bx + px, by + py));
        let mut found = Vec::new();
        for dy in -SEARCH..=SEARCH {
            let sy = i32::from(block.y) - dy;
            if sy < 0 || sy + i32::from(block.height) > i32::from(self.height) {
                continue;
            }
            for dx in -SEARCH..=SEARCH {
                let sx = i32::from(block.x) - dx;
                if (dx, dy) == (0, 0)
                    || sx < 0
                    || sx + i32::from(block.width) > i32::from(self.width)
                {
                    continue;
                }
                let (sx, sy) = (sx as usize, sy as usize);
                let hit = probes
                    .iter()
                    .zip(&want)
                    .all(|((px, py), w)| pixel_pair(&self.shadow, sx + px, sy + py) == *w);
                if !hit || !self.moved(frame, block, (dx, dy)) {
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

    /// The corner `rect` moved back by `d` comes from, if all of that source is on the screen.
    fn source(&self, rect: Rect, d: Offset) -> Option<(usize, usize)> {
        let (sx, sy) = (i32::from(rect.x) - d.0, i32::from(rect.y) - d.1);
        let inside = sx >= 0
            && sy >= 0
            && sx + i32::from(rect.width) <= i32::from(self.width)
            && sy + i32::from(rect.height) <= i32::from(self.height);
        inside.then_some((sx as usize, sy as usize))
    }

    /// Whether `rect` of `frame` is what the client shows at `rect` moved back by `d`.
    fn moved(&self, frame: &Frame, rect: Rect, d: Offset) -> bool {
        let Some((sx, sy)) = self.source(rect, d) else {
            return false;
        };
        let stride = usize::from(self.width) * 4;
        let len = usize::from(rect.width) * 4;
        (0..usize::from(rect.height)).all(|row| {
            let new = (usize::from(rect.y) + row) * stride + usize::from(rect.x) * 4;
            let old = (sy + row) * stride + sx * 4;
            same_pixels(&frame.data[new..new + len], &self.shadow[old..old + len])
        })
    }

    /// Carries out a copy on the shadow as a client does (overlap-safe: rows in the order
    /// that reads each source row before it is overwritten, each row moved as a whole).
    fn copy_in_shadow(&mut self, src: (u16, u16), dst: Rect) {
        let stride = usize::from(self.width) * 4;
        let len = usize::from(dst.width) * 4;
        let copy_row = |shadow: &mut Vec<u8>, row: usize| {
            let from = (usize::from(src.1) + row) * stride + usize::from(src.0) * 4;
            let to = (usize::from(dst.y) + row) * stride + usize::from(dst.x) * 4;
            shadow.copy_within(from..from + len, to);
        };
        if dst.y > src.1 {
            for row in (0..usize::from(dst.height)).rev() {
                copy_row(&mut self.shadow, row);
            }
        } else {
            for row in 0..usize::from(dst.height) {
                copy_row(&mut self.shadow, row);
            }
        }
    }

    /// The whole of `frame`.
    fn whole(&mut self, frame: &Frame, kinds: OpKinds) -> Vec<Op> {
        let screen = Rect::new(0, 0, frame.width, frame.height);
        paint(frame, tiles_of(screen), kinds)
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

/// Whether two rows of pixels are equal. (The X byte of each pixel is compared too: X servers
/// write it as 0, and a difference there would only cost pixels sent, never a wrong screen.)
fn same_pixels(a: &[u8], b: &[u8]) -> bool {
    a == b
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

/// Blocks of this size (within a tile) that are one colour become fills.
const BLOCK: u16 = 16;

/// The ops that paint `parts` (changed parts of tiles, sorted by tile row then x) of
/// `frame`: where the encoder fills, parts — else blocks of [`BLOCK`] — of one colour become
/// fills (merged per colour), the rest pixels merged into rectangles.
fn paint(frame: &Frame, parts: Vec<Rect>, kinds: OpKinds) -> Vec<Op> {
    if !kinds.fill {
        return merge(parts).into_iter().map(Op::Pixels).collect();
    }
    let mut fills: Vec<(u32, Vec<Rect>)> = Vec::new();
    let (mut pixels, mut blocks_left) = (Vec::new(), Vec::new());
    let mut fill = |color: u32, rect: Rect| match fills.iter_mut().find(|(c, _)| *c == color) {
        Some((_, rects)) => rects.push(rect),
        None => fills.push((color, vec![rect])),
    };
    for part in parts {
        if let Some(color) = solid(frame, part) {
            fill(color, part);
            continue;
        }
        let blocks = blocks_of(part);
        let flat: Vec<Option<u32>> = blocks
            .iter()
            .map(|b| solid(frame, *b).filter(|_| b.width >= 4 && b.height >= 4))
            .collect();
        if flat.iter().all(Option::is_none) {
            pixels.push(part);
            continue;
        }
        for (block, color) in blocks.into_iter().zip(flat) {
            match color {
                Some(color) => fill(color, block),
                None => blocks_left.push(block),
            }
        }
    }
    let mut ops: Vec<Op> = fills
        .into_iter()
        .map(|(color, rects)| Op::Fill {
            color,
            // (Exact unions only: a fill over pixels that did not change would be wrong.)
            rects: merge_exact(rects),
        })
        .collect();
    ops.extend(merge(pixels).into_iter().map(Op::Pixels));
    ops.extend(merge_exact(blocks_left).into_iter().map(Op::Pixels));
    ops
}

/// Rectangles merged only where the union is exact: neighbours in a row with the same top
/// and height, then neighbours in a column with the same left and width.
fn merge_exact(mut rects: Vec<Rect>) -> Vec<Rect> {
    rects.sort_by_key(|r| (r.y, r.height, r.x));
    let mut rows: Vec<Rect> = Vec::new();
    for r in rects {
        match rows.last_mut() {
            Some(last) if last.y == r.y && last.height == r.height && last.right() == r.x => {
                last.width += r.width;
            }
            _ => rows.push(r),
        }
    }
    rows.sort_by_key(|r| (r.x, r.width, r.y));
    let mut merged: Vec<Rect> = Vec::new();
    for r in rows {
        match merged.last_mut() {
            Some(last) if last.x == r.x && last.width == r.width && last.bottom() == r.y => {
                last.height += r.height;
            }
            _ => merged.push(r),
        }
    }
    merged.sort_by_key(|r| (r.y, r.x));
    merged
}

/// `part` (within one tile) cut on the grid of [`BLOCK`], rows top-down.
fn blocks_of(part: Rect) -> Vec<Rect> {
    let mut blocks = Vec::new();
    let mut y = part.y;
    while y < part.bottom() {
        let h = (y / BLOCK * BLOCK + BLOCK).min(part.bottom()) - y;
        let mut x = part.x;
        while x < part.right() {
            let w = (x / BLOCK * BLOCK + BLOCK).min(part.right()) - x;
            blocks.push(Rect::new(x, y, w, h));
            x += w;
        }
        y += h;
    }
    blocks
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

    use super::*;

    fn frame(w: u16, h: u16, paint: impl Fn(u16, u16) -> [u8; 3]) -> Frame {
        Frame::painted(w, h, paint)
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

    /// A wide block of text moving up under a line of text that stays: in the tiles they
    /// share, only the block's band changed (the copy would get the still line wrong), and
    /// those bands go as one copy, not one per tile.
    #[test]
    fn a_moved_edge_is_one_copy() {
        let (w, h) = (480u16, 240u16);
        let scene = |n: u16| {
            frame(w, h, move |x, y| {
                if (40..360).contains(&x) && (36..48).contains(&y) {
                    return text(x, y, 11);
                }
                let (bx, by) = (40, 60 - n * 5);
                if (bx..bx + 320).contains(&x) && (by..by + 100).contains(&y) {
                    return text(x - bx, y - by, 3);
                }
                [10, 80, 160]
            })
        };
        let mut diff = Diff::new();
        let mut client = vec![0u8; usize::from(w) * usize::from(h) * 4];
        let first = scene(0);
        apply(&mut client, &first, &diff.ops(&first, None, ALL));
        let moved = scene(1);
        let ops = diff.ops(&moved, None, ALL);
        apply(&mut client, &moved, &ops);
        assert_eq!(rgb(&client), rgb(&moved.data));
        let copies: Vec<&Op> = ops
            .iter()
            .filter(|op| matches!(op, Op::Copy { .. }))
            .collect();
        // The block spans 11 tile columns: per tile, its top band would be 11 copies alone.
        assert!(copies.len() <= 4, "{copies:?}");
        assert_eq!(pixels_sent(&ops), 0, "{ops:?}");
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
    fn fills_cover_only_their_own_pixels() {
        // Two red bars in neighbouring tiles with an unchanged grey gap between them, and a
        // tile where one block is flat and the others are not.
        let old = frame(96, 64, |_, _| [128, 128, 128]);
        let mut diff = Diff::new();
        diff.ops(&old, None, ALL);
        let new = frame(96, 64, |x, y| {
            if (20..30).contains(&x) || (40..50).contains(&x) {
                [0, 0, 255]
            } else if (64..80).contains(&x) && y < 16 {
                [9, 9, 9]
            } else if (64..96).contains(&x) && y < 32 {
                [x as u8, y as u8, 3]
            } else {
                [128, 128, 128]
            }
        });
        let ops = diff.ops(&new, None, ALL);
        let mut client = old.data.to_vec();
        apply(&mut client, &new, &ops);
        assert_eq!(rgb(&client), rgb(&new.data));
        assert!(
            ops.iter().any(|op| matches!(op, Op::Fill { .. })),
            "{ops:?}"
        );
        // The flat block of the last changed tile (64..80, 0..16) is a fill, not pixels.
        let flat = Rect::new(64, 0, 16, 16);
        assert!(
            !ops.iter()
                .any(|op| matches!(op, Op::Pixels(r) if r.intersect(&flat).is_some())),
            "{ops:?}"
        );
        assert!(ops.contains(&Op::Fill {
            color: 0x090909,
            rects: vec![flat]
        }));
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
