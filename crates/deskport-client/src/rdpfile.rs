//! `.rdp` files, as mstsc writes them: `name:type:value` lines (`s` string, `i` integer).
//! The fields deskport reads: `full address`, `server port`, `username`, `domain`,
//! `desktopwidth`, `desktopheight`, `screen mode id` (2 = full screen),
//! `enablecredsspsupport` (0 = TLS only), `audiomode` (0 = play the sound here) and the RD
//! Gateway's `gatewayhostname` (used when
//! `gatewayusagemethod` is 1 or 2, as mstsc does) and `gatewayaccesstoken`.

use std::collections::HashMap;

/// What a `.rdp` file asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RdpFile {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub username: Option<String>,
    pub domain: Option<String>,
    pub size: Option<(u16, u16)>,
    pub fullscreen: bool,
    /// `Some(false)`: `enablecredsspsupport:i:0`, NLA off.
    pub credssp: Option<bool>,
    /// `gatewayhostname` (HOST[:PORT]) when `gatewayusagemethod` says to use it.
    pub gateway: Option<String>,
    /// `gatewayaccesstoken`.
    pub gateway_token: Option<String>,
    /// `audiomode`: 0 plays the session's sound here, 1 leaves it at the remote computer, 2
    /// plays none.
    pub audio_mode: Option<u8>,
}

/// Why a file was refused: the line and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct RdpFileError {
    pub line: usize,
    pub message: String,
}

/// Splits `HOST[:PORT]` (an IPv6 address with a port in brackets).
pub fn split_host_port(text: &str) -> Result<(String, Option<u16>), String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("no host given".to_owned());
    }
    if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("{text:?}: missing ]"))?;
        if host.trim().is_empty() {
            return Err(format!("{text:?}: no host given"));
        }
        return match after.strip_prefix(':') {
            Some(port) => Ok((host.to_owned(), Some(parse_port(port)?))),
            None if after.is_empty() => Ok((host.to_owned(), None)),
            None => Err(format!("{text:?} is not HOST[:PORT]")),
        };
    }
    if text.matches(':').count() > 1 {
        // A bare IPv6 address.
        return Ok((text.to_owned(), None));
    }
    match text.split_once(':') {
        Some((host, _)) if host.trim().is_empty() => Err(format!("{text:?}: no host given")),
        Some((host, port)) => Ok((host.to_owned(), Some(parse_port(port)?))),
        None => Ok((text.to_owned(), None)),
    }
}

/// A `.rdp` file's bytes as text: UTF-16LE after its byte-order mark (what mstsc writes),
/// UTF-16BE after its mark, else UTF-8 (a UTF-8 mark skipped). Text that is not valid in its
/// encoding is refused, not guessed at.
pub fn decode(bytes: &[u8]) -> Result<String, String> {
    let utf16 = |rest: &[u8], unit: fn([u8; 2]) -> u16| {
        if !rest.len().is_multiple_of(2) {
            return Err("UTF-16 with an odd number of bytes".to_owned());
        }
        let units: Vec<u16> = rest.chunks_exact(2).map(|c| unit([c[0], c[1]])).collect();
        String::from_utf16(&units).map_err(|_| "not valid UTF-16".to_owned())
    };
    if let Some(rest) = bytes.strip_prefix(&[0xff, 0xfe]) {
        utf16(rest, u16::from_le_bytes)
    } else if let Some(rest) = bytes.strip_prefix(&[0xfe, 0xff]) {
        utf16(rest, u16::from_be_bytes)
    } else {
        let rest = bytes.strip_prefix(&[0xef, 0xbb, 0xbf]).unwrap_or(bytes);
        String::from_utf8(rest.to_vec()).map_err(|_| "not UTF-8 or UTF-16 text".to_owned())
    }
}

/// The fuzz target `rdp_file` (see `fuzz/`): `data` as a `.rdp` file's text and as a
/// `HOST[:PORT]`: never a panic, and what is accepted is usable — a host that is not empty, a
/// port that is not 0; a refusal names a line of the file.
#[cfg(feature = "fuzzing")]
pub fn fuzz_oracle(data: &[u8]) {
    check_parsed(&String::from_utf8_lossy(data));
}

/// The fuzz target `rdp_file_bytes`: `data` as a whole file's bytes (UTF-16 with its mark, as
/// mstsc writes, or UTF-8): [`decode`] never panics, what it decodes is then held to
/// `rdp_file`'s checks, and decoding is exact — the text written back as UTF-16LE with a mark
/// decodes to the same text.
#[cfg(feature = "fuzzing")]
pub fn fuzz_oracle_bytes(data: &[u8]) {
    let Ok(text) = decode(data) else {
        return;
    };
    let mut again = vec![0xff, 0xfe];
    again.extend(text.encode_utf16().flat_map(u16::to_le_bytes));
    assert_eq!(decode(&again).as_deref(), Ok(text.as_str()), "round trip");
    check_parsed(&text);
}

#[cfg(feature = "fuzzing")]
fn check_parsed(text: &str) {
    match RdpFile::parse(text) {
        Ok(file) => {
            assert!(
                file.host.as_deref().is_none_or(|h| !h.trim().is_empty()),
                "empty host"
            );
            assert!(file.port != Some(0), "port 0");
            if let Some(gateway) = &file.gateway {
                assert!(
                    split_host_port(gateway).is_ok(),
                    "a gateway that does not parse"
                );
            }
        }
        Err(e) => assert!(
            e.line <= text.lines().count() + 1,
            "line {} of {}",
            e.line,
            text.lines().count()
        ),
    }
    if let Ok((host, port)) = split_host_port(text) {
        assert!(!host.trim().is_empty(), "empty host from {text:?}");
        assert!(port != Some(0), "port 0 from {text:?}");
    }
}

fn parse_port(text: &str) -> Result<u16, String> {
    text.parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("{text:?} is not a port 1-65535"))
}

impl RdpFile {
    pub fn parse(text: &str) -> Result<Self, RdpFileError> {
        let mut fields: HashMap<String, (usize, String)> = HashMap::new();
        // mstsc writes UTF-16LE with a BOM; a text editor, UTF-8. Both arrive here as text.
        for (i, line) in text.trim_start_matches('\u{feff}').lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let mut parts = line.splitn(3, ':');
            let (Some(name), Some(kind), Some(value)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(RdpFileError {
                    line: i + 1,
                    message: format!("{line:?} is not name:type:value"),
                });
            };
            if !matches!(kind, "s" | "i" | "b") {
                return Err(RdpFileError {
                    line: i + 1,
                    message: format!("unknown field type {kind:?}"),
                });
            }
            fields.insert(
                name.trim().to_ascii_lowercase(),
                (i + 1, value.trim().to_owned()),
            );
        }
        let int = |name: &str| -> Result<Option<u32>, RdpFileError> {
            match fields.get(name) {
                None => Ok(None),
                Some((line, v)) => v.parse::<u32>().map(Some).map_err(|_| RdpFileError {
                    line: *line,
                    message: format!("{name} {v:?} is not a number"),
                }),
            }
        };
        let mut file = RdpFile::default();
        if let Some((line, address)) = fields.get("full address") {
            let (host, port) = split_host_port(address).map_err(|message| RdpFileError {
                line: *line,
                message,
            })?;
            file.host = Some(host);
            file.port = port;
        }
        if let Some(port) = int("server port")? {
            file.port = Some(
                u16::try_from(port)
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or(RdpFileError {
                        line: fields["server port"].0,
                        message: format!("server port {port} is not a port"),
                    })?,
            );
        }
        file.username = fields
            .get("username")
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty());
        file.domain = fields
            .get("domain")
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty());
        if let (Some(w), Some(h)) = (int("desktopwidth")?, int("desktopheight")?) {
            let (w, h) = (u16::try_from(w).unwrap_or(0), u16::try_from(h).unwrap_or(0));
            if !(200..=8192).contains(&w) || !(200..=8192).contains(&h) {
                return Err(RdpFileError {
                    line: fields["desktopwidth"].0,
                    message: format!("desktop size {w}x{h} is not 200x200-8192x8192"),
                });
            }
            file.size = Some((w, h));
        }
        file.fullscreen = int("screen mode id")? == Some(2);
        file.credssp = int("enablecredsspsupport")?.map(|v| v != 0);
        if let Some(mode) = int("audiomode")? {
            file.audio_mode = Some(u8::try_from(mode).ok().filter(|m| *m <= 2).ok_or(
                RdpFileError {
                    line: fields["audiomode"].0,
                    message: format!("audiomode {mode} is not 0, 1 or 2"),
                },
            )?);
        }
        if matches!(int("gatewayusagemethod")?, Some(1 | 2)) {
            if let Some((line, address)) =
                fields.get("gatewayhostname").filter(|(_, v)| !v.is_empty())
            {
                split_host_port(address).map_err(|message| RdpFileError {
                    line: *line,
                    message: format!("gatewayhostname: {message}"),
                })?;
                file.gateway = Some(address.clone());
            }
        }
        file.gateway_token = fields
            .get("gatewayaccesstoken")
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty());
        Ok(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audiomode_is_read_and_checked() {
        let file = RdpFile::parse("full address:s:h\naudiomode:i:0\n").unwrap();
        assert_eq!(file.audio_mode, Some(0));
        let err = RdpFile::parse("full address:s:h\naudiomode:i:7\n").unwrap_err();
        assert_eq!(err.line, 2);
        assert!(err.message.contains("audiomode 7"), "{err}");
    }

    #[test]
    fn files_decode_as_mstsc_writes_them_and_bad_bytes_are_refused() {
        let text = "full address:s:host:3390\r\nusername:s:Zoë\r\n";
        let mut le = vec![0xff, 0xfe];
        le.extend(text.encode_utf16().flat_map(u16::to_le_bytes));
        assert_eq!(decode(&le).as_deref(), Ok(text));
        let mut be = vec![0xfe, 0xff];
        be.extend(text.encode_utf16().flat_map(u16::to_be_bytes));
        assert_eq!(decode(&be).as_deref(), Ok(text));
        let mut utf8 = vec![0xef, 0xbb, 0xbf];
        utf8.extend_from_slice(text.as_bytes());
        assert_eq!(decode(&utf8).as_deref(), Ok(text));
        assert_eq!(decode(text.as_bytes()).as_deref(), Ok(text));
        // An odd byte count, a lone surrogate, bytes that are no UTF-8.
        assert!(decode(&le[..le.len() - 1]).is_err());
        assert!(decode(&[0xff, 0xfe, 0x00, 0xd8]).is_err());
        assert!(decode(&[0x66, 0xff, 0x66]).is_err());
    }

    #[test]
    fn reads_what_mstsc_writes() {
        let file = RdpFile::parse(
            "\u{feff}screen mode id:i:2\r\ndesktopwidth:i:1280\r\ndesktopheight:i:800\r\n\
             full address:s:198.18.2.2:3390\r\nusername:s:alice\r\nenablecredsspsupport:i:0\r\n\
             authentication level:i:2\r\n",
        )
        .unwrap();
        assert_eq!(file.host.as_deref(), Some("198.18.2.2"));
        assert_eq!(file.port, Some(3390));
        assert_eq!(file.username.as_deref(), Some("alice"));
        assert_eq!(file.size, Some((1280, 800)));
        assert!(file.fullscreen);
        assert_eq!(file.credssp, Some(false));
    }

    /// The console's gateway download: the gateway is used only when the usage method says
    /// so (1 direct, 2 detect), as mstsc does.
    #[test]
    fn gateway_fields() {
        let text = "full address:s:198.18.2.2:3389\r\ngatewayhostname:s:gw.example:8443\r\n\
                    gatewayaccesstoken:s:tok-123\r\ngatewayprofileusagemethod:i:1\r\n";
        let off = RdpFile::parse(text).unwrap();
        assert_eq!(
            (off.gateway, off.gateway_token.as_deref()),
            (None, Some("tok-123"))
        );
        let on = RdpFile::parse(&format!("{text}gatewayusagemethod:i:1\r\n")).unwrap();
        assert_eq!(on.gateway.as_deref(), Some("gw.example:8443"));
        let bad = RdpFile::parse("gatewayusagemethod:i:1\ngatewayhostname:s:gw:0\n");
        assert_eq!(bad.unwrap_err().line, 2);
    }

    #[test]
    fn bad_files_name_the_line() {
        assert_eq!(
            RdpFile::parse("full address:s:h\nnonsense\n")
                .unwrap_err()
                .line,
            2
        );
        assert_eq!(RdpFile::parse("desktopwidth:i:wide\n").unwrap_err().line, 1);
        assert!(RdpFile::parse("full address:s:h:99999\n").is_err());
        assert!(RdpFile::parse("desktopwidth:i:10\ndesktopheight:i:10\n").is_err());
    }

    #[test]
    fn host_and_port() {
        assert_eq!(split_host_port("127.0.0.1"), Ok(("127.0.0.1".into(), None)));
        assert_eq!(split_host_port("h:3390"), Ok(("h".into(), Some(3390))));
        assert_eq!(
            split_host_port("[::1]:3390"),
            Ok(("::1".into(), Some(3390)))
        );
        assert_eq!(
            split_host_port("2001:db8::1"),
            Ok(("2001:db8::1".into(), None))
        );
        assert!(split_host_port("h:0").is_err());
        assert!(split_host_port("").is_err());
        // No host at all (the rdp_file fuzz oracle requires one; these were accepted).
        for empty in ["[]", "[]:3389", ":3389", "[ ]:1"] {
            assert!(split_host_port(empty).is_err(), "{empty}");
        }
    }
}
