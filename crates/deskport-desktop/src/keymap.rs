//! RDP scancodes (PC/AT set 1, as the client's keyboard sends them) to X keycodes of an
//! evdev-based keymap (Xorg and Xvfb with the `evdev` XKB rules): X keycode = Linux input
//! event code + 8. Base keys have the same number as their set-1 scancode; E0-prefixed keys
//! are listed. See the Linux kernel's `atkbd` set-1 table and `input-event-codes.h`.

/// The X keycode for `scancode`, or `None` for keys without one.
pub fn x_keycode(scancode: u8, extended: bool) -> Option<u8> {
    let evdev: u16 = if extended {
        match scancode {
            0x1C => 96,  // KP Enter
            0x1D => 97,  // Right Ctrl
            0x35 => 98,  // KP /
            0x37 => 99,  // Print Screen (SysRq)
            0x38 => 100, // Right Alt (AltGr)
            0x46 => 119, // Ctrl+Break → Pause
            0x47 => 102, // Home
            0x48 => 103, // Up
            0x49 => 104, // Page Up
            0x4B => 105, // Left
            0x4D => 106, // Right
            0x4F => 107, // End
            0x50 => 108, // Down
            0x51 => 109, // Page Down
            0x52 => 110, // Insert
            0x53 => 111, // Delete
            0x5B => 125, // Left Windows
            0x5C => 126, // Right Windows
            0x5D => 127, // Menu
            0x5E => 116, // Power
            0x5F => 142, // Sleep
            0x63 => 143, // Wake
            0x10 => 165, // Previous track
            0x19 => 163, // Next track
            0x20 => 113, // Mute
            0x22 => 164, // Play/Pause
            0x24 => 166, // Stop
            0x2E => 114, // Volume down
            0x30 => 115, // Volume up
            _ => return None,
        }
    } else {
        match scancode {
            0x01..=0x58 => u16::from(scancode), // Esc … F12, the main block and the keypad
            0x59 => 117,                        // KP =
            0x64..=0x6E => u16::from(scancode) + 119, // F13-F23 (0x64 → 183)
            0x70 => 93,                         // Katakana/Hiragana
            0x73 => 89,                         // RO
            0x79 => 92,                         // Henkan
            0x7B => 94,                         // Muhenkan
            0x7D => 124,                        // Yen
            _ => return None,
        }
    };
    u8::try_from(evdev + 8).ok()
}

/// The RDP scancode `(scancode, extended)` of X keycode `keycode` in an evdev keymap: the
/// inverse of [`x_keycode`], used by deskport's client to send the keys of the local keyboard.
pub fn scancode(keycode: u8) -> Option<(u8, bool)> {
    static TABLE: std::sync::OnceLock<[Option<(u8, bool)>; 256]> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = [None; 256];
        // Base keys first so that a key reachable both ways keeps its unprefixed code.
        for extended in [true, false] {
            for code in 0..=u8::MAX {
                if let Some(k) = x_keycode(code, extended) {
                    table[usize::from(k)] = Some((code, extended));
                }
            }
        }
        table
    })[usize::from(keycode)]
}

/// The X keysym that types `c`: Latin-1 characters are their own keysym, every other
/// character is a Unicode keysym (`0x0100_0000` + code point), as X11 defines them.
pub fn keysym_of(c: char) -> u32 {
    let cp = u32::from(c);
    match cp {
        0x20..=0x7e | 0xa0..=0xff => cp,
        _ => 0x0100_0000 + cp,
    }
}

/// The character a keysym types, for printable Latin-1 and Unicode keysyms (and the legacy
/// EuroSign); `None` for function keys, modifiers and the legacy non-Latin-1 sets.
pub fn char_of(keysym: u32) -> Option<char> {
    match keysym {
        0x20..=0x7e | 0xa0..=0xff => char::from_u32(keysym),
        0x20ac => Some('€'),
        0x0100_00a0..=0x0110_ffff => char::from_u32(keysym - 0x0100_0000),
        _ => None,
    }
}

/// The XKB layout and variant (`""`: the layout's default) of a Windows keyboard layout
/// identifier (KLID: the language in the low 16 bits, the variant above), as clients send it
/// in their Core Data and Input capability; `None` for one deskport does not know (the
/// session then keeps its layout). The set xrdp and FreeRDP map for their users, by the
/// layouts' names in Windows.
pub fn xkb_layout(klid: u32) -> Option<(&'static str, &'static str)> {
    Some(match klid {
        0x0000_0409 => ("us", ""),
        0x0001_0409 => ("us", "dvorak"),
        0x0002_0409 => ("us", "intl"),
        0x0000_0809 => ("gb", ""),
        0x0000_1809 => ("ie", ""),
        0x0000_1009 => ("ca", ""),
        0x0001_1009 => ("ca", "multix"),
        0x0000_0c0c => ("ca", "fr-legacy"),
        0x0000_0407 => ("de", ""),
        0x0001_0407 => ("de", ""),
        0x0000_0c07 => ("at", ""),
        0x0000_0807 => ("ch", ""),
        0x0000_100c => ("ch", "fr"),
        0x0000_040c => ("fr", ""),
        0x0000_080c => ("be", ""),
        0x0000_0813 => ("be", ""),
        0x0000_0413 => ("nl", ""),
        0x0000_0410 => ("it", ""),
        0x0000_040a => ("es", ""),
        0x0000_0c0a => ("es", ""),
        0x0000_080a => ("latam", ""),
        0x0000_0816 => ("pt", ""),
        0x0000_0416 => ("br", ""),
        0x0001_0416 => ("br", ""),
        0x0000_040b => ("fi", ""),
        0x0000_041d => ("se", ""),
        0x0000_0414 => ("no", ""),
        0x0000_0406 => ("dk", ""),
        0x0000_040f => ("is", ""),
        0x0000_0415 => ("pl", ""),
        0x0000_0405 => ("cz", ""),
        0x0000_041b => ("sk", ""),
        0x0000_040e => ("hu", ""),
        0x0000_0418 => ("ro", ""),
        0x0000_0402 => ("bg", ""),
        0x0000_041a => ("hr", ""),
        0x0000_0424 => ("si", ""),
        0x0000_081a => ("rs", "latin"),
        0x0000_0c1a => ("rs", ""),
        0x0000_0425 => ("ee", ""),
        0x0000_0426 => ("lv", ""),
        0x0000_0427 => ("lt", ""),
        0x0000_0419 => ("ru", ""),
        0x0000_0422 => ("ua", ""),
        0x0000_0423 => ("by", ""),
        0x0000_042f => ("mk", ""),
        0x0000_0408 => ("gr", ""),
        0x0000_041f => ("tr", ""),
        0x0001_041f => ("tr", "f"),
        0x0000_040d => ("il", ""),
        0x0000_0401 => ("ara", ""),
        0x0000_041e => ("th", ""),
        0x0000_042a => ("vn", ""),
        0x0000_0411 | 0xe001_0411 | 0xe002_0411 => ("jp", ""),
        0x0000_0412 | 0xe001_0412 => ("kr", ""),
        0x0000_0404 => ("tw", ""),
        0x0000_0804 => ("cn", ""),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::{char_of, keysym_of, scancode, x_keycode, xkb_layout};

    /// Every layout and variant the table names exists in the XKB data the X servers load
    /// (xkb-data, installed with them): a misspelt one would make setxkbmap fail.
    #[test]
    fn every_keyboard_layout_exists_in_the_xkb_data() {
        let symbols = std::path::Path::new("/usr/share/X11/xkb/symbols");
        assert!(
            symbols.is_dir(),
            "xkb-data is not installed (scripts/install-deps)"
        );
        assert_eq!(xkb_layout(0x407), Some(("de", "")));
        assert_eq!(xkb_layout(0x1234_5678), None);
        let mut checked = 0;
        for klid in (0..=0xffffu32).flat_map(|lang| {
            [
                lang,
                0x1_0000 | lang,
                0x2_0000 | lang,
                0xe001_0000 | lang,
                0xe002_0000 | lang,
            ]
        }) {
            let Some((layout, variant)) = xkb_layout(klid) else {
                continue;
            };
            let text = std::fs::read_to_string(symbols.join(layout))
                .unwrap_or_else(|e| panic!("{klid:#x}: no XKB layout {layout}: {e}"));
            if !variant.is_empty() {
                assert!(
                    text.contains(&format!("xkb_symbols \"{variant}\"")),
                    "{klid:#x}: XKB layout {layout} has no variant {variant}"
                );
            }
            checked += 1;
        }
        assert!(checked > 50, "{checked}");
    }

    #[test]
    fn every_mapped_key_round_trips() {
        for extended in [false, true] {
            for code in 0..=u8::MAX {
                if let Some(k) = x_keycode(code, extended) {
                    assert_eq!(
                        scancode(k),
                        Some((code, extended)),
                        "scancode {code:#x} extended={extended}"
                    );
                }
            }
        }
        assert_eq!(scancode(38), Some((0x1E, false))); // a
        assert_eq!(scancode(111), Some((0x48, true))); // Up
        assert_eq!(scancode(8), None);
    }

    #[test]
    fn characters_and_keysyms() {
        for c in ['a', 'Z', '~', ' ', 'é', 'ÿ', '€', 'ß', 'Ж', '中', '😀'] {
            assert_eq!(char_of(keysym_of(c)), Some(c), "{c}");
        }
        assert_eq!(keysym_of('é'), 0xe9);
        assert_eq!(keysym_of('€'), 0x0100_20ac);
        assert_eq!(char_of(0x20ac), Some('€')); // the legacy EuroSign
        assert_eq!(char_of(0xff0d), None); // Return
        assert_eq!(char_of(0xffe1), None); // Shift_L
    }

    #[test]
    fn common_keys() {
        assert_eq!(x_keycode(0x1E, false), Some(38)); // a
        assert_eq!(x_keycode(0x1C, false), Some(36)); // Return
        assert_eq!(x_keycode(0x1C, true), Some(104)); // KP_Enter
        assert_eq!(x_keycode(0x2A, false), Some(50)); // Shift_L
        assert_eq!(x_keycode(0x48, true), Some(111)); // Up
        assert_eq!(x_keycode(0x48, false), Some(80)); // KP_8
        assert_eq!(x_keycode(0x53, true), Some(119)); // Delete
        assert_eq!(x_keycode(0x38, true), Some(108)); // AltGr
        assert_eq!(x_keycode(0x7F, false), None);
    }
}
