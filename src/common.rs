//! The crate's shared vocabulary: the boxed future and error types, wall-clock time as the
//! upstream writes it, random ids, and base64url (JWT payloads, simulator directives). One
//! definition each, used everywhere.

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::{SystemTime, UNIX_EPOCH};

/// A boxed, sendable future: where a concrete type cannot be named (trait objects, async
/// blocks) or would be recursive.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A boxed error, as hyper and tower-http use it.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn epoch_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Seconds since the Unix epoch.
pub fn epoch_secs() -> u64 {
    epoch_millis() / 1000
}

/// 64 random bits from a per-thread generator (wyrand) seeded once from the OS.
///
/// Not a cryptographic generator: for ids that must be unique, not secret — request ids,
/// completion and tool-call ids, the upstream's message ids, backoff jitter. `Uuid::new_v4`
/// asks the OS on every call (a `getrandom` system call); a turn makes eight of them, which
/// were ~2 % of the proxy's CPU samples at 5,000 requests/s. Lock owner tokens,
/// compared across instances, still come from the OS.
pub fn random_u64() -> u64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(uuid::Uuid::new_v4().as_u64_pair().0);
    }
    STATE.with(|s| {
        let x = s.get().wrapping_add(0xa076_1d64_78bd_642f);
        s.set(x);
        let t = u128::from(x) * u128::from(x ^ 0xe703_7ed1_a0b4_28db);
        (t >> 64) as u64 ^ t as u64
    })
}

/// A random (version 4) UUID from [`random_u64`].
pub fn random_uuid() -> uuid::Uuid {
    let bytes = (u128::from(random_u64()) << 64 | u128::from(random_u64())).to_le_bytes();
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

/// A secret string: never printed by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

const BASE64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// base64url without padding (RFC 4648 §5), as JWTs use it.
pub fn base64url_encode(data: &[u8]) -> String {
    encode(data, BASE64URL, false)
}

/// Standard base64 with padding (RFC 4648 §4), as JSON APIs and `Basic` credentials carry
/// binary data.
pub fn base64_encode(data: &[u8]) -> String {
    encode(data, BASE64, true)
}

fn encode(data: &[u8], alphabet: &[u8; 64], pad: bool) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(alphabet[(n >> (18 - 6 * i)) as usize & 63]));
            } else if pad {
                out.push('=');
            }
        }
    }
    out
}

/// Decode base64url, padded or not; the standard alphabet's `+` and `/` are accepted too.
/// `None` for any other character.
pub fn base64url_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// `prefix` and 24 random letters and digits, as the APIs' call and tool-use ids look
/// (`call_…`, `toolu_…`): twelve from each of two random UUIDs (122 random bits each;
/// 62^12 < 2^71).
pub fn random_id(prefix: &str) -> String {
    const ALPHABET: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut id = String::with_capacity(prefix.len() + 24);
    id.push_str(prefix);
    for _ in 0..2 {
        let mut n = random_uuid().as_u128();
        for _ in 0..12 {
            id.push(char::from(ALPHABET[(n % 62) as usize]));
            n /= 62;
        }
    }
    id
}

/// Lowercase hex SHA-256 (how the web front end sends passwords; the simulator checks
/// them the same way; documents and uploads are named by it).
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex(&Sha256::digest(data))
}

/// Lowercase hex of bytes (by table: conversation keys are digested several times per
/// request, and a `write!` per byte showed in the load profile).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// `%XX` escapes decoded; anything that is not a whole escape is kept as it is.
pub fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// The value of cookie `wanted` in a Cookie header (`None` when absent or empty).
pub fn cookie_from(cookies: &str, wanted: &str) -> Option<String> {
    cookies.split(';').find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        (name.trim() == wanted && !value.trim().is_empty()).then(|| value.trim().to_owned())
    })
}

/// `2025-02-19T00:00:00Z` (RFC 3339, UTC) from Unix seconds.
pub(crate) fn rfc3339(secs: u64) -> String {
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// `2025-02-19T00:00:00.250Z` (RFC 3339, UTC, milliseconds) from Unix milliseconds.
pub(crate) fn rfc3339_millis(ms: u64) -> String {
    let secs = rfc3339(ms / 1000);
    format!("{}.{:03}Z", secs.trim_end_matches('Z'), ms % 1000)
}

/// Days since 1970-01-01 → (year, month 1-12, day 1-31); Howard Hinnant's algorithm.
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_in_utc_with_and_without_milliseconds() {
        // 2026-12-08 is day 20,795 since 1970-01-01 (date(1) agrees).
        let secs = 20_795 * 86_400 + 13 * 3600 + 4 * 60 + 5;
        assert_eq!(rfc3339(secs), "2026-12-08T13:04:05Z");
        assert_eq!(rfc3339_millis(secs * 1000 + 7), "2026-12-08T13:04:05.007Z");
        assert_eq!(rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn hex_is_lowercase_two_digits_a_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff, 0x10]), "000fa5ff10");
        assert_eq!(hex(&[]), "");
        // The FIPS 180-2 test vector.
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn random_uuids_are_version_4_and_do_not_repeat() {
        let ids: std::collections::HashSet<uuid::Uuid> =
            (0..100_000).map(|_| random_uuid()).collect();
        assert_eq!(ids.len(), 100_000);
        assert!(ids
            .iter()
            .all(|u| u.get_version_num() == 4 && u.get_variant() == uuid::Variant::RFC4122));
        // Every bit position varies (a stuck bit would show as all ones or all zeros).
        let (mut ones, mut zeros) = (0u64, 0u64);
        for _ in 0..1_000 {
            let r = random_u64();
            ones |= r;
            zeros |= !r;
        }
        assert_eq!((ones, zeros), (u64::MAX, u64::MAX));
        // Threads get their own seeds.
        let other = std::thread::spawn(random_u64).join().unwrap();
        assert_ne!(other, random_u64());
    }

    #[test]
    fn base64_matches_rfc_4648_test_vectors() {
        // RFC 4648 §10.
        let vectors = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in vectors {
            assert_eq!(base64_encode(plain.as_bytes()), encoded);
            assert_eq!(base64url_decode(encoded).unwrap(), plain.as_bytes());
        }
        assert_eq!(base64_encode(&[0xfb, 0xff]), "+/8=");
    }

    #[test]
    fn base64url_round_trips_and_matches_rfc_4648() {
        // RFC 4648 §10 test vectors, unpadded.
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64url_encode(plain.as_bytes()), encoded);
            assert_eq!(base64url_decode(encoded).unwrap(), plain.as_bytes());
        }
        let bytes: Vec<u8> = (0..=255).collect();
        let e = base64url_encode(&bytes);
        assert!(!e.contains(['+', '/', '=']));
        assert_eq!(base64url_decode(&e).unwrap(), bytes);
        assert_eq!(base64url_decode("Zm9vYg==").unwrap(), b"foob");
        assert_eq!(base64url_decode("a b"), None);
    }
}
