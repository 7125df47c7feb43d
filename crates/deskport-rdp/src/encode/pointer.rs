//! The pointer on the wire: its shape (New Pointer / Color Pointer updates) and the position a
//! program moved it to (Pointer Position update), as fast-path output (MS-RDPBCGR 2.2.9.1.2.1).

use deskport_desktop::Cursor;
#[cfg(test)]
use ironrdp_pdu::fast_path::FastPathHeader;
use ironrdp_pdu::fast_path::{FastPathUpdatePdu, Fragmentation, UpdateCode};

use super::write_update;

/// The largest pointer a (non-large) pointer update carries.
const MAX_POINTER: u16 = 96;

/// A fast-path pointer update for `cursor`, appended to `out`: a 32-bit New Pointer with its
/// alpha when the client's Pointer capability has a pointer cache (`new_pointer`), else a
/// 24-bit Color Pointer with a 1-bit transparency mask (MS-RDPBCGR 2.2.9.1.1.4.4-5). Images
/// beyond 96x96 are cropped.
pub fn pointer_update(cursor: &Cursor, new_pointer: bool, out: &mut Vec<u8>) -> anyhow::Result<()> {
    use ironrdp_pdu::pointer::{ColorPointerAttribute, Point16, PointerAttribute};
    let (w, h) = (
        cursor.width.min(MAX_POINTER),
        cursor.height.min(MAX_POINTER),
    );
    let pixel =
        |x: u16, y: u16| cursor.argb[usize::from(y) * usize::from(cursor.width) + usize::from(x)];
    let bytes_per_pixel = if new_pointer { 4 } else { 3 };
    let xor_row = (usize::from(w) * bytes_per_pixel).div_ceil(2) * 2;
    let and_row = usize::from(w).div_ceil(16) * 2;
    let mut xor_mask = vec![0u8; xor_row * usize::from(h)];
    let mut and_mask = vec![0u8; and_row * usize::from(h)];
    // Rows bottom-up.
    for (i, y) in (0..h).rev().enumerate() {
        for x in 0..w {
            let p = pixel(x, y);
            let a = p >> 24;
            // X gives premultiplied colour; RDP wants it straight.
            let straight = |c: u32| (c * 255).checked_div(a).map_or(0, |v| v.min(255) as u8);
            let (r, g, b) = (
                straight((p >> 16) & 0xff),
                straight((p >> 8) & 0xff),
                straight(p & 0xff),
            );
            let at = i * xor_row + usize::from(x) * bytes_per_pixel;
            if new_pointer {
                xor_mask[at..at + 4].copy_from_slice(&[b, g, r, a as u8]);
            } else if a >= 128 {
                xor_mask[at..at + 3].copy_from_slice(&[b, g, r]);
            } else {
                // Transparent: AND 1, XOR 0 keeps the screen.
                and_mask[i * and_row + usize::from(x) / 8] |= 0x80 >> (x % 8);
            }
        }
    }
    let color_pointer = ColorPointerAttribute {
        cache_index: 0,
        hot_spot: Point16 {
            x: cursor.hotspot.0.min(w - 1),
            y: cursor.hotspot.1.min(h - 1),
        },
        width: w,
        height: h,
        xor_mask: &xor_mask,
        and_mask: &and_mask,
    };
    let (update_code, body) = if new_pointer {
        let attribute = PointerAttribute {
            xor_bpp: 32,
            color_pointer,
        };
        (UpdateCode::NewPointer, ironrdp_core::encode_vec(&attribute))
    } else {
        (
            UpdateCode::ColorPointer,
            ironrdp_core::encode_vec(&color_pointer),
        )
    };
    let body = body.map_err(|e| anyhow::anyhow!("encode a pointer update: {e}"))?;
    let update = FastPathUpdatePdu {
        fragmentation: Fragmentation::Single,
        update_code,
        compression_flags: None,
        compression_type: None,
        data: &body,
    };
    write_update(&update, out)
}

/// Appends a Pointer Position Update: the client moves its pointer to `(x, y)`.
pub fn pointer_position(x: u16, y: u16, out: &mut Vec<u8>) -> anyhow::Result<()> {
    let body = ironrdp_core::encode_vec(&ironrdp_pdu::pointer::PointerPositionAttribute { x, y })
        .map_err(|e| anyhow::anyhow!("encode a pointer position: {e}"))?;
    let update = FastPathUpdatePdu {
        fragmentation: Fragmentation::Single,
        update_code: UpdateCode::PositionPointer,
        compression_flags: None,
        compression_type: None,
        data: &body,
    };
    write_update(&update, out)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn pointers_go_bottom_up_with_alpha_or_a_mask() {
        use ironrdp_core::{decode_cursor, ReadCursor};
        use ironrdp_pdu::pointer::{ColorPointerAttribute, PointerAttribute};
        // 3x2: opaque red, half-transparent white (premultiplied), transparent; then blue row.
        let cursor = Cursor {
            serial: 1,
            width: 3,
            height: 2,
            hotspot: (1, 5),
            argb: Arc::new(vec![
                0xffff_0000,
                0x8080_8080,
                0,
                0xff00_00ff,
                0xff00_00ff,
                0xff00_00ff,
            ]),
        };
        let body = |out: &[u8]| {
            let mut c = ReadCursor::new(out);
            let _header: FastPathHeader = decode_cursor(&mut c).unwrap();
            let update: FastPathUpdatePdu<'_> = decode_cursor(&mut c).unwrap();
            (update.update_code, update.data.to_vec())
        };
        let mut out = Vec::new();
        pointer_update(&cursor, true, &mut out).unwrap();
        let (code, data) = body(&out);
        assert_eq!(code, UpdateCode::NewPointer);
        let p: PointerAttribute<'_> = ironrdp_core::decode(&data).unwrap();
        assert_eq!(p.xor_bpp, 32);
        let c = p.color_pointer;
        assert_eq!(
            (c.width, c.height, c.hot_spot.x, c.hot_spot.y),
            (3, 2, 1, 1)
        );
        // Bottom-up: the blue row first; straight (not premultiplied) alpha colour.
        assert_eq!(&c.xor_mask[..4], &[0xff, 0, 0, 0xff]);
        assert_eq!(
            &c.xor_mask[12..24],
            &[0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0x80, 0, 0, 0, 0]
        );
        assert!(c.and_mask.iter().all(|b| *b == 0));

        out.clear();
        pointer_update(&cursor, false, &mut out).unwrap();
        let (code, data) = body(&out);
        assert_eq!(code, UpdateCode::ColorPointer);
        let c: ColorPointerAttribute<'_> = ironrdp_core::decode(&data).unwrap();
        // 24-bit rows of 9 bytes padded to 10; the mask's rows are 2 bytes.
        assert_eq!(c.xor_mask.len(), 20);
        assert_eq!(c.and_mask, &[0, 0, 0x20, 0]);
        assert_eq!(&c.xor_mask[10..13], &[0, 0, 0xff]);
    }
}
