//! Comparing screenshots: what an RDP client shows against what the server's display holds.

use std::path::Path;

use image::{Rgb, RgbImage};

/// Writes `image` as a PNG (a test artifact to look at).
pub fn save_png(image: &RgbImage, path: &Path) {
    image
        .save_with_format(path, image::ImageFormat::Png)
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Whether two colours are within `tolerance` on every channel.
pub fn close(a: Rgb<u8>, b: Rgb<u8>, tolerance: u8) -> bool {
    a.0.iter()
        .zip(b.0.iter())
        .all(|(x, y)| x.abs_diff(*y) <= tolerance)
}

/// The fraction (0.0–1.0) of pixels in the `width`x`height` rectangle at (`ax`,`ay`) in `a`
/// that differ by more than `tolerance` on some channel from the same-sized rectangle at
/// (`bx`,`by`) in `b`. Panics if a rectangle leaves its image.
#[allow(clippy::too_many_arguments)]
pub fn diff_fraction(
    a: &RgbImage,
    (ax, ay): (u32, u32),
    b: &RgbImage,
    (bx, by): (u32, u32),
    (width, height): (u32, u32),
    tolerance: u8,
) -> f64 {
    assert!(
        ax + width <= a.width() && ay + height <= a.height(),
        "rectangle leaves image a"
    );
    assert!(
        bx + width <= b.width() && by + height <= b.height(),
        "rectangle leaves image b"
    );
    let total = u64::from(width) * u64::from(height);
    if total == 0 {
        return 0.0;
    }
    let mut differing = 0u64;
    for y in 0..height {
        for x in 0..width {
            if !close(
                *a.get_pixel(ax + x, ay + y),
                *b.get_pixel(bx + x, by + y),
                tolerance,
            ) {
                differing += 1;
            }
        }
    }
    differing as f64 / total as f64
}

/// Finds where `needle` appears in `haystack` (exactly, up to `tolerance` per channel), trying
/// every offset where the first row's first pixel matches. Returns the top-left corner.
///
/// Used to locate a remote desktop inside a client window whose decorations and position the
/// test does not control.
pub fn find(haystack: &RgbImage, needle: &RgbImage, tolerance: u8) -> Option<(u32, u32)> {
    if needle.width() > haystack.width() || needle.height() > haystack.height() {
        return None;
    }
    let first = *needle.get_pixel(0, 0);
    for y in 0..=haystack.height() - needle.height() {
        for x in 0..=haystack.width() - needle.width() {
            if !close(*haystack.get_pixel(x, y), first, tolerance) {
                continue;
            }
            if matches_at(haystack, (x, y), needle, tolerance) {
                return Some((x, y));
            }
        }
    }
    None
}

/// Whether all of `needle` equals `haystack` at (`x`,`y`), stopping at the first difference.
fn matches_at(haystack: &RgbImage, (x, y): (u32, u32), needle: &RgbImage, tolerance: u8) -> bool {
    (0..needle.height()).all(|ny| {
        (0..needle.width()).all(|nx| {
            close(
                *haystack.get_pixel(x + nx, y + ny),
                *needle.get_pixel(nx, ny),
                tolerance,
            )
        })
    })
}

/// Peak signal-to-noise ratio of `a` against `b` (same size) over all RGB channels, in dB;
/// infinite when they are equal.
pub fn psnr(a: &RgbImage, b: &RgbImage) -> f64 {
    assert_eq!(
        a.dimensions(),
        b.dimensions(),
        "PSNR of images of different sizes"
    );
    let squares: u64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| u64::from(x.abs_diff(*y)).pow(2))
        .sum();
    if squares == 0 {
        return f64::INFINITY;
    }
    let mse = squares as f64 / a.as_raw().len() as f64;
    10.0 * (255.0f64 * 255.0 / mse).log10()
}
