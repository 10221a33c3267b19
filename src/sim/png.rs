//! A minimal PNG encoder for the simulated image generator: 1-bit greyscale, no
//! interlacing, filter type 0 on every row, the image data in a zlib stream of *stored*
//! (uncompressed) deflate blocks — valid for every decoder, and small enough at one bit a
//! pixel (a 1328×1328 image is ≈ 221 KB). CRC-32 and Adler-32 are written out here: the
//! simulator needs no compression library for pictures nobody looks at.

/// The PNG signature (PNG spec §5.2).
const SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];
/// The most a stored deflate block holds (RFC 1951 §3.2.4: `LEN` is 16 bits).
const STORED_BLOCK_MAX: usize = 0xffff;

/// A `width`×`height` 1-bit greyscale PNG whose pixel (x, y) is white when `white(x, y)`.
/// The dimensions must be non-zero for a decoder to accept the image (PNG spec §11.2.2);
/// the caller's size table guarantees it.
pub(super) fn encode(width: u32, height: u32, white: impl Fn(u32, u32) -> bool) -> Vec<u8> {
    let row_bytes = (width as usize).div_ceil(8);
    let mut raw = Vec::with_capacity((row_bytes + 1) * height as usize);
    for y in 0..height {
        // Filter type 0 (None): the scanline as it is.
        raw.push(0);
        let mut byte = 0u8;
        for x in 0..width {
            if white(x, y) {
                byte |= 0x80 >> (x % 8);
            }
            if x % 8 == 7 || x + 1 == width {
                raw.push(byte);
                byte = 0;
            }
        }
    }
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    // Bit depth 1, colour type 0 (greyscale), deflate, adaptive filtering, no interlace.
    ihdr.extend_from_slice(&[1, 0, 0, 0, 0]);

    let idat = zlib_stored(&raw);
    let mut png = Vec::with_capacity(SIGNATURE.len() + idat.len() + 64);
    png.extend_from_slice(&SIGNATURE);
    chunk(&mut png, b"IHDR", &ihdr);
    chunk(&mut png, b"IDAT", &idat);
    chunk(&mut png, b"IEND", &[]);
    png
}

/// One chunk: length, type, data, and the CRC of type and data (PNG spec §5.3).
fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    // A chunk's length is below 2^31 by the spec; ours are far below (≈ 2.2 MB at most).
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32_update(crc32_update(!0, kind), data);
    out.extend_from_slice(&(!crc).to_be_bytes());
}

/// A zlib stream (RFC 1950) of stored deflate blocks: header `78 01` (deflate, 32K
/// window, no dictionary, check bits), the blocks, the Adler-32 of the data.
pub(super) fn zlib_stored(data: &[u8]) -> Vec<u8> {
    let blocks = data.len().div_ceil(STORED_BLOCK_MAX).max(1);
    let mut out = Vec::with_capacity(data.len() + blocks * 5 + 6);
    out.extend_from_slice(&[0x78, 0x01]);
    let mut pieces = data.chunks(STORED_BLOCK_MAX).peekable();
    if pieces.peek().is_none() {
        // An empty stream still needs its one final block.
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(piece) = pieces.next() {
        let last = pieces.peek().is_none();
        // BFINAL in bit 0, BTYPE 00 (stored); the rest of the byte is padding.
        out.push(u8::from(last));
        let len = piece.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(piece);
    }
    out.extend_from_slice(&adler32(data).to_be_bytes());
    out
}

/// The CRC-32 table of the reflected polynomial 0xEDB88320 (PNG spec Annex D).
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut n = 0;
    while n < 256 {
        let mut c = n as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 == 1 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[n] = c;
        n += 1;
    }
    table
};

/// Run the CRC register `crc` over `data` (start with `!0`, finish with `!`).
fn crc32_update(mut crc: u32, data: &[u8]) -> u32 {
    for &b in data {
        crc = CRC_TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    crc
}

/// Adler-32 (RFC 1950 §8.2); the sums are reduced every 5,552 bytes, the most that
/// cannot overflow 32 bits.
fn adler32(data: &[u8]) -> u32 {
    const MOD: u32 = 65_521;
    let (mut a, mut b) = (1u32, 0u32);
    for block in data.chunks(5_552) {
        for &byte in block {
            a += u32::from(byte);
            b += a;
        }
        a %= MOD;
        b %= MOD;
    }
    (b << 16) | a
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// The chunks of a PNG, CRCs checked: `(type, data)`.
    pub(in crate::sim) fn chunks(png: &[u8]) -> Vec<([u8; 4], Vec<u8>)> {
        assert_eq!(png[..8], SIGNATURE, "signature");
        let mut out = Vec::new();
        let mut at = 8;
        while at < png.len() {
            let len = u32::from_be_bytes(png[at..at + 4].try_into().unwrap()) as usize;
            let kind: [u8; 4] = png[at + 4..at + 8].try_into().unwrap();
            let data = png[at + 8..at + 8 + len].to_vec();
            let crc = u32::from_be_bytes(png[at + 8 + len..at + 12 + len].try_into().unwrap());
            assert_eq!(
                !crc32_update(crc32_update(!0, &kind), &data),
                crc,
                "CRC of {kind:?}"
            );
            out.push((kind, data));
            at += 12 + len;
        }
        out
    }

    /// Width and height of the IHDR chunk.
    pub(in crate::sim) fn dimensions(png: &[u8]) -> (u32, u32) {
        let chunks = chunks(png);
        let (kind, ihdr) = &chunks[0];
        assert_eq!(kind, b"IHDR");
        (
            u32::from_be_bytes(ihdr[0..4].try_into().unwrap()),
            u32::from_be_bytes(ihdr[4..8].try_into().unwrap()),
        )
    }

    /// The data of a zlib stream of stored blocks, header and checksum verified.
    fn inflate_stored(z: &[u8]) -> Vec<u8> {
        assert_eq!(u16::from_be_bytes([z[0], z[1]]) % 31, 0, "FCHECK");
        assert_eq!(z[0] & 0x0f, 8, "deflate");
        let mut out = Vec::new();
        let mut at = 2;
        loop {
            let header = z[at];
            assert_eq!(header & 0b110, 0, "stored block");
            let len = u16::from_le_bytes([z[at + 1], z[at + 2]]);
            let nlen = u16::from_le_bytes([z[at + 3], z[at + 4]]);
            assert_eq!(len, !nlen);
            out.extend_from_slice(&z[at + 5..at + 5 + len as usize]);
            at += 5 + len as usize;
            if header & 1 == 1 {
                break;
            }
        }
        assert_eq!(z[at..], adler32(&out).to_be_bytes(), "Adler-32");
        out
    }

    #[test]
    fn checksums_match_their_check_values() {
        // The CRC-32 check value of "123456789" (the catalogue of parametrised CRCs).
        assert_eq!(!crc32_update(!0, b"123456789"), 0xcbf4_3926);
        // RFC 1950's example value for "Wikipedia".
        assert_eq!(adler32(b"Wikipedia"), 0x11e6_0398);
        assert_eq!(adler32(&[0xff; 100_000]), {
            let (mut a, mut b) = (1u64, 0u64);
            for _ in 0..100_000 {
                a = (a + 0xff) % 65_521;
                b = (b + a) % 65_521;
            }
            ((b << 16) | a) as u32
        });
    }

    #[test]
    fn an_image_reads_back_row_by_row() {
        // 13 pixels: two bytes a row, the last one padded.
        let png = encode(13, 3, |x, y| (x + y) % 2 == 0);
        assert_eq!(dimensions(&png), (13, 3));
        let chunks = chunks(&png);
        let kinds: Vec<&[u8; 4]> = chunks.iter().map(|(k, _)| k).collect();
        assert_eq!(kinds, [b"IHDR", b"IDAT", b"IEND"]);
        assert_eq!(chunks[0].1[8..], [1, 0, 0, 0, 0], "1-bit greyscale");
        let raw = inflate_stored(&chunks[1].1);
        assert_eq!(
            raw,
            [
                0,
                0b1010_1010,
                0b1010_1000, //
                0,
                0b0101_0101,
                0b0101_0000, //
                0,
                0b1010_1010,
                0b1010_1000,
            ]
        );
    }

    #[test]
    fn large_images_span_several_stored_blocks() {
        let png = encode(1328, 1328, |x, _| x % 3 == 0);
        assert_eq!(dimensions(&png), (1328, 1328));
        let raw = inflate_stored(&chunks(&png)[1].1);
        assert_eq!(raw.len(), (1 + 1328 / 8) * 1328);
        assert!(png.len() < 230_000, "{} bytes", png.len());
        assert_eq!(inflate_stored(&zlib_stored(&[])), Vec::<u8>::new());
    }
}
