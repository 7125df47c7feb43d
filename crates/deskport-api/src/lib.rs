//! The one place that knows deskport's wire formats: the JSON of the HTTP API ([`v1`]) and
//! the policy document that agents (the firewall, the RDP server) receive from the manager or
//! read from a file ([`policy_doc`]), plus — with the `client` feature — a typed client
//! ([`client`]) used by the CLI and the agents, and the one follower of the agents' feed
//! ([`feed`]). Types here are `serde` types; they convert explicitly to and from the core types of
//! `deskport-policy`, which are not `Serialize`, so the wire format can stay stable while the
//! core changes.

#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "client")]
pub mod feed;
pub mod policy_doc;
pub mod v1;

#[cfg(feature = "client")]
pub use client::{parse_fingerprint, Client, ClientError, ServerTrust};
#[cfg(feature = "client")]
pub use feed::Feed;
pub use policy_doc::{DocError, PolicyDocument};

/// Milliseconds since the Unix epoch as RFC 3339 UTC with milliseconds
/// (`2026-11-23T23:28:10.123Z`).
pub fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{d:02}T{h:02}:{m:02}:{s:02}.{millis:03}Z")
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_dates() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00.000Z");
        // Reference: Python's datetime.fromtimestamp(1795390090.123, timezone.utc).
        assert_eq!(
            super::rfc3339(1_795_390_090_123),
            "2026-11-22T23:28:10.123Z"
        );
        assert_eq!(super::rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
