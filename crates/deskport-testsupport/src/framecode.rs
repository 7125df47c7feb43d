//! The frame code: a frame number drawn into a frame in large black and white cells, so that
//! whoever sees the screen (an RDP client's window) can tell which frame it shows.
//!
//! One row of [`CELLS`] square cells of [`CELL`] pixels at [`ORIGIN`]: an 8-cell start marker,
//! then the 16 bits of the frame number interleaved with the 16 bits of a check word (a hash of
//! the number), most significant first. A reader samples the middle of every cell and
//! thresholds its brightness, so a lossy (H.264) picture still decodes; a frame whose code is
//! half from one frame and half from another (a torn update) fails the check and is rejected.

/// Side of a cell in pixels.
pub const CELL: u16 = 16;
/// Cells in the row: marker, then 32 data cells.
pub const CELLS: u16 = 8 + 32;
/// Top-left corner of the code on the screen.
pub const ORIGIN: (u16, u16) = (8, 4);
/// Size of the code on the screen.
pub const SIZE: (u16, u16) = (CELL * CELLS, CELL);
/// The start marker (1 = white).
const MARKER: [bool; 8] = [true, false, true, true, false, false, true, false];

/// The check word of frame `n`: a 16-bit mix of its number.
pub fn check(n: u16) -> u16 {
    let mut x = u32::from(n).wrapping_mul(0x9e37_79b1) ^ 0x5a5a_1234;
    x ^= x >> 15;
    x = x.wrapping_mul(0x85eb_ca77);
    x ^= x >> 13;
    (x & 0xffff) as u16
}

/// The cells of frame `n`'s code, left to right: `true` is white.
pub fn cells(n: u16) -> Vec<bool> {
    let c = check(n);
    let mut out = MARKER.to_vec();
    for bit in (0..16).rev() {
        out.push(n >> bit & 1 == 1);
        out.push(c >> bit & 1 == 1);
    }
    out
}

/// The frame number shown by `cells` (one brightness bit per cell), if they are a valid code.
pub fn decode(cells: &[bool]) -> Option<u16> {
    if cells.len() != usize::from(CELLS) || cells[..8] != MARKER {
        return None;
    }
    let (mut n, mut c) = (0u16, 0u16);
    for pair in cells[8..].chunks_exact(2) {
        n = n << 1 | u16::from(pair[0]);
        c = c << 1 | u16::from(pair[1]);
    }
    (check(n) == c).then_some(n)
}

/// Rows of the code that a reader samples: the middle quarter of the cells' height.
pub const SAMPLE_ROWS: (u16, u16) = (CELL * 3 / 8, CELL / 4);

/// Decodes the code from `rows` rows of 32-bit BGRX pixels, `stride` bytes apart, whose first
/// pixel is the code's left edge (`rows` covers [`SAMPLE_ROWS`] of the code).
pub fn decode_bgrx(data: &[u8], stride: usize, rows: usize) -> Option<u16> {
    let mut bits = Vec::with_capacity(usize::from(CELLS));
    let cell = usize::from(CELL);
    for i in 0..usize::from(CELLS) {
        // The middle half of the cell's width.
        let (x0, x1) = (i * cell + cell / 4, i * cell + cell * 3 / 4);
        let mut sum = 0u32;
        let mut count = 0u32;
        for row in 0..rows {
            let line = data.get(row * stride..row * stride + (x1 * 4))?;
            for px in line[x0 * 4..].chunks_exact(4) {
                // Luma, roughly: (2 R + 5 G + B) / 8.
                sum += (2 * u32::from(px[2]) + 5 * u32::from(px[1]) + u32::from(px[0])) / 8;
                count += 1;
            }
        }
        bits.push(count > 0 && sum / count >= 128);
    }
    decode(&bits)
}

/// Decodes the code from an RGB image whose code starts at (`x`, `y`).
pub fn decode_image(image: &image::RgbImage, (x, y): (u32, u32)) -> Option<u16> {
    let (w, h) = (u32::from(SIZE.0), u32::from(SIZE.1));
    if x + w > image.width() || y + h > image.height() {
        return None;
    }
    let (r0, rn) = (u32::from(SAMPLE_ROWS.0), u32::from(SAMPLE_ROWS.1));
    let mut data = Vec::with_capacity((w * rn * 4) as usize);
    for row in 0..rn {
        for col in 0..w {
            let p = image.get_pixel(x + col, y + r0 + row);
            data.extend_from_slice(&[p[2], p[1], p[0], 0]);
        }
    }
    decode_bgrx(&data, (w * 4) as usize, rn as usize)
}

/// Where a code is in `image` (its top-left corner), looked for around [`ORIGIN`] first, then
/// anywhere in the top third; with the number it shows.
pub fn locate(image: &image::RgbImage) -> Option<((u32, u32), u16)> {
    let origin = (u32::from(ORIGIN.0), u32::from(ORIGIN.1));
    if let Some(n) = decode_image(image, origin) {
        return Some((origin, n));
    }
    let limit_y = (image.height() / 3).min(image.height().saturating_sub(u32::from(SIZE.1)));
    let limit_x = image.width().saturating_sub(u32::from(SIZE.0));
    let (x, y) = (0..=limit_y)
        .find_map(|y| (0..=limit_x).find_map(|x| decode_image(image, (x, y)).map(|_| (x, y))))?;
    // The sampling tolerates offsets of a few pixels: the code is in the middle of the
    // positions that decode.
    let cell = u32::from(CELL);
    let x_end = (x..x + cell)
        .take_while(|&x| decode_image(image, (x, y)).is_some())
        .last()
        .unwrap_or(x);
    let mid_x = (x + x_end) / 2;
    let ys: Vec<u32> = (y.saturating_sub(cell)..y + cell)
        .filter(|&y| decode_image(image, (mid_x, y)).is_some())
        .collect();
    let at = (mid_x, (ys.first()? + ys.last()?) / 2);
    decode_image(image, at).map(|n| (at, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_frame_number_round_trips_and_torn_codes_are_rejected() {
        for n in 0..=2000u16 {
            assert_eq!(decode(&cells(n)), Some(n));
        }
        // A code whose right part comes from the next frame (a tear at any cell boundary).
        let mut accepted = 0;
        for n in 0..1000u16 {
            let (a, b) = (cells(n), cells(n + 1));
            for cut in 9..usize::from(CELLS) {
                let torn: Vec<bool> = a[..cut].iter().chain(&b[cut..]).copied().collect();
                if torn != a && torn != b && decode(&torn).is_some() {
                    accepted += 1;
                }
            }
        }
        assert_eq!(accepted, 0, "torn codes taken for frames");
        assert_eq!(decode(&[true; CELLS as usize]), None);
    }

    #[test]
    fn codes_decode_from_pixels_with_noise() {
        let mut image = image::RgbImage::from_pixel(700, 60, image::Rgb([40, 40, 40]));
        let at = (21u32, 17u32);
        for (i, white) in cells(299).into_iter().enumerate() {
            for dy in 0..u32::from(CELL) {
                for dx in 0..u32::from(CELL) {
                    // Lossy coding: values off by up to 50 from black and white.
                    let wobble = ((dx * 7 + dy * 13 + i as u32) % 50) as u8;
                    let v = if white { 255 - wobble } else { wobble };
                    image.put_pixel(
                        at.0 + i as u32 * u32::from(CELL) + dx,
                        at.1 + dy,
                        image::Rgb([v, v, v]),
                    );
                }
            }
        }
        let ((x, y), n) = locate(&image).expect("the code is found");
        assert_eq!(n, 299);
        assert!(
            x.abs_diff(at.0) <= 1 && y.abs_diff(at.1) <= 1,
            "found at ({x}, {y})"
        );
    }
}
