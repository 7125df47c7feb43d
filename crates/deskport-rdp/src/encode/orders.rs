//! Primary drawing orders on the classic path (MS-RDPEGDI 2.2.2.2.1.1): the client copies part
//! of its own screen (ScrBlt, 2.2.2.2.1.1.2.7) or fills rectangles with one colour
//! (OpaqueRect, 2.2.2.2.1.1.2.5; MultiOpaqueRect, 2.2.2.2.1.1.2.6) — a dozen bytes where a
//! bitmap would carry every pixel. They travel in fast-path Orders updates (MS-RDPBCGR
//! 2.2.9.1.2.1.1: `numberOrders`, then the orders), in line with the bitmap updates, so the
//! client applies both in the order they were sent.
//!
//! Every order is written whole: TS_STANDARD | TS_TYPE_CHANGE, all fields present, absolute
//! coordinates, no bounds. Deltas to the previous order would save a few bytes but share
//! state with the client (kept across PDUs, lost on reactivation) that is easy to get wrong.
//!
//! Which orders a client takes is the orderSupport array of its Order capability set
//! (MS-RDPBCGR 2.2.7.1.3), where PatBlt's entry also stands for OpaqueRect: xfreerdp takes
//! all three, rdesktop ScrBlt and OpaqueRect, IronRDP none.

use ironrdp_pdu::rdp::capability_sets::Order;

use super::Rect;

/// Rectangles in one MultiOpaqueRect at most (FreeRDP refuses more).
pub const MAX_MULTI_RECTS: usize = 45;

/// controlFlags: a primary order whose type follows (MS-RDPEGDI 2.2.2.2.1.1.2).
const STANDARD_TYPE_CHANGE: u8 = 0x01 | 0x08;
/// orderType values (MS-RDPEGDI 2.2.2.2.1.1.2, TS_ENC_*_ORDER).
const SCR_BLT: u8 = 0x02;
const OPAQUE_RECT: u8 = 0x0a;
const MULTI_OPAQUE_RECT: u8 = 0x12;
/// SRCCOPY: the destination becomes the source.
const SRCCOPY: u8 = 0xcc;
/// orderSupport indexes (MS-RDPBCGR 2.2.7.1.3).
const NEG_PATBLT_INDEX: usize = 0x01;
const NEG_SCRBLT_INDEX: usize = 0x02;
const NEG_OPAQUE_RECT_INDEX: usize = 0x0a;
const NEG_MULTIOPAQUERECT_INDEX: usize = 0x12;

/// The drawing orders a client takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OrderKinds {
    pub scr_blt: bool,
    pub opaque_rect: bool,
    pub multi_opaque_rect: bool,
}

impl OrderKinds {
    /// From an orderSupport array (32 entries; non-zero: supported).
    pub fn from_order_support(support: &[u8]) -> Self {
        let on = |i: usize| support.get(i).is_some_and(|&v| v != 0);
        Self {
            scr_blt: on(NEG_SCRBLT_INDEX),
            opaque_rect: on(NEG_OPAQUE_RECT_INDEX) || on(NEG_PATBLT_INDEX),
            multi_opaque_rect: on(NEG_MULTIOPAQUERECT_INDEX),
        }
    }

    /// From a client's Order capability set. (ironrdp-pdu keeps the array private and has no
    /// name for OpaqueRect's index: it is read from the encoded set, 32 bytes in.)
    pub fn from_capability(order: &Order) -> Self {
        match ironrdp_core::encode_vec(order) {
            Ok(bytes) if bytes.len() >= 64 => Self::from_order_support(&bytes[32..64]),
            _ => Self::default(),
        }
    }
}

/// The three colour bytes of an order (TS_COLOR) for `color` (`0x00RRGGBB`) in a session of
/// `bpp` bits per pixel: red, green, blue at 24 and 32; the 16- or 15-bit pixel value
/// (little-endian, as the bitmaps carry it) otherwise.
pub fn color_bytes(color: u32, bpp: u16) -> [u8; 3] {
    let (r, g, b) = ((color >> 16) as u8, (color >> 8) as u8, color as u8);
    if matches!(bpp, 24 | 32) {
        return [r, g, b];
    }
    let [lo, hi, ..] = super::pixel_value(b, g, r, bpp).to_le_bytes();
    [lo, hi, 0]
}

/// The orders of one fast-path Orders update, as they are added.
#[derive(Debug, Default)]
pub struct Orders {
    count: u16,
    data: Vec<u8>,
}

impl Orders {
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The update's size so far in bytes.
    pub fn len(&self) -> usize {
        2 + self.data.len()
    }

    /// The update data (`numberOrders`, then the orders); empties this.
    pub fn take(&mut self) -> Vec<u8> {
        let mut update = Vec::with_capacity(self.len());
        update.extend_from_slice(&self.count.to_le_bytes());
        update.append(&mut self.data);
        self.count = 0;
        update
    }

    /// Copies the client's pixels at `src` (the top-left corner of a rectangle the size of
    /// `dst`) to `dst`.
    pub fn scr_blt(&mut self, dst: Rect, src: (u16, u16)) {
        self.header(SCR_BLT, &[0x7f]);
        self.rect(dst);
        self.data.push(SRCCOPY);
        self.coord(src.0);
        self.coord(src.1);
    }

    /// Fills `rect` with the colour `color` (see [`color_bytes`]).
    pub fn opaque_rect(&mut self, rect: Rect, color: [u8; 3]) {
        self.header(OPAQUE_RECT, &[0x7f]);
        self.rect(rect);
        self.data.extend_from_slice(&color);
    }

    /// Fills `rects` (1 to [`MAX_MULTI_RECTS`]) with the colour `color`.
    pub fn multi_opaque_rect(&mut self, rects: &[Rect], color: [u8; 3]) {
        debug_assert!((1..=MAX_MULTI_RECTS).contains(&rects.len()));
        let rects = &rects[..rects.len().min(MAX_MULTI_RECTS)];
        let Some(first) = rects.first() else {
            return;
        };
        self.header(MULTI_OPAQUE_RECT, &[0xff, 0x01]);
        // Fields 1-4: the rectangles' bounds.
        let bounds = rects.iter().fold(*first, |a, b| {
            let (x, y) = (a.x.min(b.x), a.y.min(b.y));
            Rect::new(
                x,
                y,
                a.right().max(b.right()) - x,
                a.bottom().max(b.bottom()) - y,
            )
        });
        self.rect(bounds);
        self.data.extend_from_slice(&color);
        self.data.push(rects.len() as u8);
        // codedDeltaList (2.2.2.2.1.1.1.5): cbData, zero bits (all clear: every value is
        // written; FreeRDP reads a set width or height bit as "the previous one"), then per
        // rectangle left and top as deltas to the previous rectangle's, width, height.
        let mut list = vec![0u8; rects.len().div_ceil(2)];
        let (mut left, mut top) = (0i32, 0i32);
        for r in rects {
            delta(i32::from(r.x) - left, &mut list);
            delta(i32::from(r.y) - top, &mut list);
            delta(i32::from(r.width), &mut list);
            delta(i32::from(r.height), &mut list);
            (left, top) = (i32::from(r.x), i32::from(r.y));
        }
        self.data
            .extend_from_slice(&(list.len() as u16).to_le_bytes());
        self.data.extend_from_slice(&list);
    }

    fn header(&mut self, order_type: u8, field_flags: &[u8]) {
        self.count += 1;
        self.data
            .extend_from_slice(&[STANDARD_TYPE_CHANGE, order_type]);
        self.data.extend_from_slice(field_flags);
    }

    fn rect(&mut self, r: Rect) {
        for v in [r.x, r.y, r.width, r.height] {
            self.coord(v);
        }
    }

    /// An absolute coordinate (TS_COORDINATE: 16 bits, signed).
    fn coord(&mut self, v: u16) {
        debug_assert!(v <= i16::MAX as u16);
        self.data.extend_from_slice(&v.to_le_bytes());
    }
}

/// A value of a delta-encoded rectangle (MS-RDPEGDI 2.2.2.2.1.1.1.4): one byte for -64..63,
/// else two (-16384..16383), the sign in the first byte's bit 6.
fn delta(v: i32, out: &mut Vec<u8>) {
    if (-64..=63).contains(&v) {
        out.push((v & 0x7f) as u8);
    } else {
        debug_assert!((-16384..=16383).contains(&v));
        out.push(0x80 | ((v >> 8) & 0x7f) as u8);
        out.push(v as u8);
    }
}

/// Reading orders back, for tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// A decoded order: type, then (x, y, w, h) rectangles and the rest.
    #[derive(Debug, PartialEq, Eq)]
    pub(crate) enum Decoded {
        ScrBlt {
            dst: (i16, i16, i16, i16),
            rop: u8,
            src: (i16, i16),
        },
        OpaqueRect {
            rect: (i16, i16, i16, i16),
            color: [u8; 3],
        },
        MultiOpaqueRect {
            bounds: (i16, i16, i16, i16),
            color: [u8; 3],
            rects: Vec<(i32, i32, i32, i32)>,
        },
    }

    /// Reads an Orders update the way FreeRDP's orders.c does, field by field (only what
    /// this module writes: every field present, absolute coordinates, no bounds).
    pub(crate) fn decode(update: &[u8]) -> Vec<Decoded> {
        let mut s = update;
        let mut take = |n: usize| {
            let (head, rest) = s.split_at(n);
            s = rest;
            head.to_vec()
        };
        let count = u16::from_le_bytes(take(2).try_into().unwrap());
        let mut orders = Vec::new();
        for _ in 0..count {
            let [flags, order_type] = take(2)[..] else {
                unreachable!()
            };
            assert_eq!(flags, 0x09, "TS_STANDARD | TS_TYPE_CHANGE");
            let field_bytes = if order_type == MULTI_OPAQUE_RECT {
                2
            } else {
                1
            };
            let fields = take(field_bytes);
            let mut coord = || i16::from_le_bytes(take(2).try_into().unwrap());
            let rect = (coord(), coord(), coord(), coord());
            match order_type {
                SCR_BLT => {
                    assert_eq!(fields, [0x7f]);
                    let rop = take(1)[0];
                    let src = (
                        i16::from_le_bytes(take(2).try_into().unwrap()),
                        i16::from_le_bytes(take(2).try_into().unwrap()),
                    );
                    orders.push(Decoded::ScrBlt {
                        dst: rect,
                        rop,
                        src,
                    });
                }
                OPAQUE_RECT => {
                    assert_eq!(fields, [0x7f]);
                    let color = take(3).try_into().unwrap();
                    orders.push(Decoded::OpaqueRect { rect, color });
                }
                MULTI_OPAQUE_RECT => {
                    assert_eq!(fields, [0xff, 0x01]);
                    let color = take(3).try_into().unwrap();
                    let n = usize::from(take(1)[0]);
                    assert!(n <= MAX_MULTI_RECTS);
                    let cb = usize::from(u16::from_le_bytes(take(2).try_into().unwrap()));
                    let list = take(cb);
                    orders.push(Decoded::MultiOpaqueRect {
                        bounds: rect,
                        color,
                        rects: delta_rects(&list, n),
                    });
                }
                other => panic!("unexpected order type {other:#x}"),
            }
        }
        assert!(s.is_empty(), "{} bytes after the orders", s.len());
        orders
    }

    /// FreeRDP's update_read_delta_rects: zero bits, then the deltas.
    fn delta_rects(list: &[u8], n: usize) -> Vec<(i32, i32, i32, i32)> {
        let (zero_bits, mut s) = list.split_at(n.div_ceil(2));
        let mut read = || {
            let b = s[0];
            let mut v = if b & 0x40 != 0 {
                i32::from(b) | !0x3f
            } else {
                i32::from(b & 0x3f)
            };
            s = &s[1..];
            if b & 0x80 != 0 {
                v = (v << 8) | i32::from(s[0]);
                s = &s[1..];
            }
            v
        };
        let mut rects: Vec<(i32, i32, i32, i32)> = Vec::new();
        for i in 0..n {
            let flags = zero_bits[i / 2] << (4 * (i % 2));
            assert_eq!(flags & 0xf0, 0, "every value present");
            let (dl, dt, w, h) = (read(), read(), read(), read());
            let (pl, pt) = rects.last().map_or((0, 0), |r| (r.0, r.1));
            rects.push((pl + dl, pt + dt, w, h));
        }
        assert!(s.is_empty(), "the list is exactly cbData long");
        rects
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{decode, Decoded};
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect()
    }

    #[test]
    fn scr_blt_bytes_and_fields() {
        // Scroll a 400x300 box at (100,200) up by 4 px (the design notes' example).
        let mut o = Orders::default();
        o.scr_blt(Rect::new(100, 200, 400, 296), (100, 204));
        let update = o.take();
        assert_eq!(
            update,
            hex("01 00  09 02 7F  64 00 C8 00 90 01 28 01  CC  64 00 CC 00")
        );
        assert_eq!(
            decode(&update),
            vec![Decoded::ScrBlt {
                dst: (100, 200, 400, 296),
                rop: 0xcc,
                src: (100, 204)
            }]
        );
        assert!(o.is_empty() && o.len() == 2, "taking empties it");
    }

    #[test]
    fn opaque_rect_bytes_and_fields() {
        let mut o = Orders::default();
        o.opaque_rect(Rect::new(10, 20, 100, 50), color_bytes(0xff8000, 32));
        let update = o.take();
        assert_eq!(
            update,
            hex("01 00  09 0A 7F  0A 00 14 00 64 00 32 00  FF 80 00")
        );
        assert_eq!(
            decode(&update),
            vec![Decoded::OpaqueRect {
                rect: (10, 20, 100, 50),
                color: [0xff, 0x80, 0x00]
            }]
        );
    }

    #[test]
    fn multi_opaque_rect_bytes_and_fields() {
        // Two 100x20 rectangles at (10,10) and (10,40), red (the design notes' example).
        let mut o = Orders::default();
        let rects = [Rect::new(10, 10, 100, 20), Rect::new(10, 40, 100, 20)];
        o.multi_opaque_rect(&rects, color_bytes(0xff0000, 24));
        let update = o.take();
        assert_eq!(
            update[2..],
            hex("09 12 FF 01  0A 00 0A 00 64 00 32 00  FF 00 00  02  0B 00  00  0A 0A 80 64 14  00 1E 80 64 14")
        );
        assert_eq!(
            decode(&update),
            vec![Decoded::MultiOpaqueRect {
                bounds: (10, 10, 100, 50),
                color: [0xff, 0, 0],
                rects: vec![(10, 10, 100, 20), (10, 40, 100, 20)],
            }]
        );
    }

    #[test]
    fn delta_rects_round_trip_in_both_directions_and_sizes() {
        // Rectangles going right and left, down and up, near and far (one- and two-byte
        // deltas, negative ones included), an odd count (a half-used zero-bits byte), and
        // the most one order takes.
        let mut seed = 0x9e37_79b9_u32;
        let mut next = |m: u32| {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed % m
        };
        for n in [1usize, 2, 3, 44, 45] {
            let rects: Vec<Rect> = (0..n)
                .map(|i| {
                    let far = i % 3 == 0;
                    let (x, y) = if far {
                        (next(8000) as u16, next(8000) as u16)
                    } else {
                        (next(60) as u16 + 100, next(60) as u16 + 100)
                    };
                    Rect::new(x, y, next(300) as u16 + 1, next(70) as u16 + 1)
                })
                .collect();
            let mut o = Orders::default();
            o.multi_opaque_rect(&rects, [1, 2, 3]);
            let decoded = decode(&o.take());
            let Decoded::MultiOpaqueRect {
                rects: got, bounds, ..
            } = &decoded[0]
            else {
                panic!("{decoded:?}")
            };
            let want: Vec<_> = rects
                .iter()
                .map(|r| {
                    (
                        i32::from(r.x),
                        i32::from(r.y),
                        i32::from(r.width),
                        i32::from(r.height),
                    )
                })
                .collect();
            assert_eq!(got, &want, "{n} rectangles");
            // The bounds cover every rectangle.
            for r in &rects {
                assert!(i32::from(bounds.0) <= i32::from(r.x));
                assert!(i32::from(bounds.0) + i32::from(bounds.2) >= i32::from(r.right()));
                assert!(i32::from(bounds.1) + i32::from(bounds.3) >= i32::from(r.bottom()));
            }
        }
    }

    #[test]
    fn several_orders_share_an_update() {
        let mut o = Orders::default();
        o.opaque_rect(Rect::new(0, 0, 8, 8), [9, 9, 9]);
        o.scr_blt(Rect::new(0, 10, 640, 300), (0, 0));
        o.multi_opaque_rect(&[Rect::new(5, 5, 1, 1)], [7, 7, 7]);
        let len = o.len();
        let update = o.take();
        assert_eq!(update.len(), len);
        let decoded = decode(&update);
        assert_eq!(decoded.len(), 3);
        assert!(matches!(decoded[1], Decoded::ScrBlt { src: (0, 0), .. }));
    }

    #[test]
    fn colours_at_each_depth() {
        assert_eq!(color_bytes(0x123456, 32), [0x12, 0x34, 0x56]);
        assert_eq!(color_bytes(0x123456, 24), [0x12, 0x34, 0x56]);
        // White and a pure red as 16-bit (5-6-5) and 15-bit (5-5-5) pixels.
        assert_eq!(color_bytes(0xffffff, 16), [0xff, 0xff, 0]);
        assert_eq!(color_bytes(0xff0000, 16), [0x00, 0xf8, 0]);
        assert_eq!(color_bytes(0x00ff00, 16), [0xe0, 0x07, 0]);
        assert_eq!(color_bytes(0xff0000, 15), [0x00, 0x7c, 0]);
    }

    #[test]
    fn order_support_of_each_client() {
        let mut support = [0u8; 32];
        assert_eq!(
            OrderKinds::from_order_support(&support),
            OrderKinds::default()
        );
        // rdesktop 1.9: PatBlt (standing for OpaqueRect) and ScrBlt, no MultiOpaqueRect.
        support[NEG_PATBLT_INDEX] = 1;
        support[NEG_SCRBLT_INDEX] = 1;
        assert_eq!(
            OrderKinds::from_order_support(&support),
            OrderKinds {
                scr_blt: true,
                opaque_rect: true,
                multi_opaque_rect: false
            }
        );
        // Through the capability set, as a client's Confirm Active carries it.
        use ironrdp_pdu::rdp::capability_sets::{
            OrderFlags, OrderSupportExFlags, OrderSupportIndex,
        };
        let mut order = Order::new(
            OrderFlags::NEGOTIATE_ORDER_SUPPORT,
            OrderSupportExFlags::empty(),
            0,
            0,
        );
        assert_eq!(OrderKinds::from_capability(&order), OrderKinds::default());
        order.set_support_flag(OrderSupportIndex::ScrBlt, true);
        order.set_support_flag(OrderSupportIndex::MultiOpaqueRect, true);
        assert_eq!(
            OrderKinds::from_capability(&order),
            OrderKinds {
                scr_blt: true,
                opaque_rect: false,
                multi_opaque_rect: true
            }
        );
        // OpaqueRect's own index (no name in ironrdp-pdu): read from the encoded set.
        let mut bytes = ironrdp_core::encode_vec(&order).unwrap();
        bytes[32 + NEG_OPAQUE_RECT_INDEX] = 1;
        let order: Order = ironrdp_core::decode(&bytes).unwrap();
        assert!(OrderKinds::from_capability(&order).opaque_rect);
    }
}
