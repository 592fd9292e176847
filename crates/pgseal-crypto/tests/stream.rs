//! The sealed-stream format: round trips, and every kind of damage detected.

use std::io::Read;

use pgseal_crypto::stream::{MIN_CHUNK_SIZE, SealWriter, UnsealReader, seal_from, unseal_to};
use pgseal_crypto::{EncryptionContext, ErrorKind, Kms, LocalKms, Passphrase};
use proptest::prelude::*;

const CS: u32 = MIN_CHUNK_SIZE;
const HEADER_FIXED: usize = 8 + 1 + 1 + 4 + 32;

struct Fixture {
    _dir: tempfile::TempDir,
    kms: LocalKms,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let kms = LocalKms::open(
        &dir.path().join("kms"),
        &Passphrase::new("stream test passphrase"),
    )
    .unwrap();
    kms.create_key(Some("snap"), "").unwrap();
    Fixture { _dir: dir, kms }
}

fn ctx() -> EncryptionContext {
    EncryptionContext::new().with("pgseal:snapshot", "s1")
}

/// Data that differs at every position, so a misplaced chunk cannot decrypt to the same bytes.
fn data(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(31) ^ (i >> 8)) as u8)
        .collect()
}

fn seal(kms: &dyn Kms, plain: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    seal_from(kms, "snap", ctx(), &mut &plain[..], &mut out, CS).unwrap();
    out
}

fn unseal(kms: &dyn Kms, sealed: &[u8]) -> pgseal_crypto::Result<Vec<u8>> {
    let mut out = Vec::new();
    unseal_to(kms, sealed, &mut out)?;
    Ok(out)
}

/// Where the chunks start: after the header, whose length the test reads from the header.
fn chunks_start(sealed: &[u8]) -> usize {
    let mut p = HEADER_FIXED;
    let key_len = u16::from_be_bytes([sealed[p], sealed[p + 1]]) as usize;
    p += 2 + key_len;
    let wrapped_len = u16::from_be_bytes([sealed[p], sealed[p + 1]]) as usize;
    p += 2 + wrapped_len;
    let ctx_len = u32::from_be_bytes(sealed[p..p + 4].try_into().unwrap()) as usize;
    p + 4 + ctx_len + 32
}

#[test]
fn round_trips_at_every_size_around_chunk_boundaries() {
    let f = fixture();
    let cs = CS as usize;
    for len in [0, 1, cs - 1, cs, cs + 1, 2 * cs, 2 * cs + 1, 7 * cs + 123] {
        let plain = data(len);
        let sealed = seal(&f.kms, &plain);
        let expected_chunks = if len == 0 { 1 } else { len.div_ceil(cs) };
        assert_eq!(
            sealed.len(),
            chunks_start(&sealed) + len + 16 * expected_chunks,
            "len {len}"
        );
        assert_eq!(unseal(&f.kms, &sealed).unwrap(), plain, "len {len}");
    }
}

#[test]
fn ciphertext_does_not_contain_the_plaintext_and_differs_per_stream() {
    let f = fixture();
    let plain = b"PLAINTEXT-MARKER-".repeat(1000);
    let a = seal(&f.kms, &plain);
    let b = seal(&f.kms, &plain);
    assert!(!a.windows(17).any(|w| w == b"PLAINTEXT-MARKER-"));
    assert_ne!(
        a[chunks_start(&a)..],
        b[chunks_start(&b)..],
        "fresh data key and salt per stream"
    );
}

fn assert_rejected(kms: &dyn Kms, sealed: &[u8], what: &str) {
    match unseal(kms, sealed) {
        Ok(_) => panic!("{what}: accepted"),
        Err(e) => {
            let ok_kind = matches!(e.kind(), ErrorKind::Tampered | ErrorKind::NotSealed);
            assert!(ok_kind, "{what}: wrong kind {:?}: {e}", e.kind());
            let text = e.to_string();
            assert!(
                text.contains("damaged or was tampered with")
                    || text.contains("not a pgseal sealed stream"),
                "{what}: {text}"
            );
        }
    }
}

#[test]
fn every_single_byte_change_is_rejected() {
    let f = fixture();
    let sealed = seal(&f.kms, &data(2 * CS as usize + 100));
    for i in 0..sealed.len() {
        let mut bad = sealed.clone();
        bad[i] ^= 0x01;
        assert_rejected(&f.kms, &bad, &format!("bit flip at byte {i}"));
    }
    // Only the signature's bytes read as "not a stream"; all others as damage.
    let mut bad = sealed.clone();
    bad[0] ^= 0xff;
    assert_eq!(
        unseal(&f.kms, &bad).unwrap_err().kind(),
        ErrorKind::NotSealed
    );
    let mut bad = sealed.clone();
    bad[HEADER_FIXED - 1] ^= 0xff;
    assert_eq!(
        unseal(&f.kms, &bad).unwrap_err().kind(),
        ErrorKind::Tampered
    );
}

#[test]
fn truncation_at_every_position_is_rejected() {
    let f = fixture();
    let sealed = seal(&f.kms, &data(3 * CS as usize));
    for len in 0..sealed.len() {
        assert_rejected(&f.kms, &sealed[..len], &format!("truncated to {len}"));
    }
    // At a chunk boundary the error says the stream was cut short.
    let boundary = chunks_start(&sealed) + (CS as usize + 16);
    let err = unseal(&f.kms, &sealed[..boundary]).unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");
}

#[test]
fn swapped_duplicated_dropped_and_appended_chunks_are_rejected() {
    let f = fixture();
    let sealed = seal(&f.kms, &data(3 * CS as usize + 10));
    let start = chunks_start(&sealed);
    let chunk = CS as usize + 16;
    let c = |i: usize| &sealed[start + i * chunk..(start + (i + 1) * chunk).min(sealed.len())];
    let header = &sealed[..start];
    let assemble = |parts: &[&[u8]]| -> Vec<u8> {
        [header]
            .iter()
            .chain(parts)
            .flat_map(|p| p.iter().copied())
            .collect()
    };
    assert_eq!(
        unseal(&f.kms, &assemble(&[c(0), c(1), c(2), c(3)])).unwrap(),
        data(3 * CS as usize + 10)
    );
    assert_rejected(
        &f.kms,
        &assemble(&[c(1), c(0), c(2), c(3)]),
        "swapped 0 and 1",
    );
    assert_rejected(
        &f.kms,
        &assemble(&[c(0), c(0), c(1), c(2), c(3)]),
        "duplicated 0",
    );
    assert_rejected(&f.kms, &assemble(&[c(0), c(2), c(3)]), "dropped 1");
    assert_rejected(
        &f.kms,
        &assemble(&[c(0), c(1), c(2)]),
        "dropped the final chunk",
    );
    assert_rejected(
        &f.kms,
        &assemble(&[c(0), c(1), c(2), c(3), b"x"]),
        "appended a byte",
    );
    assert_rejected(
        &f.kms,
        &assemble(&[c(0), c(1), c(2), c(3), c(3)]),
        "final chunk twice",
    );
    // A chunk from another stream under the same key does not fit either.
    let other = seal(&f.kms, &data(3 * CS as usize + 10));
    let other_c1 = &other[chunks_start(&other) + chunk..chunks_start(&other) + 2 * chunk];
    assert_rejected(
        &f.kms,
        &assemble(&[c(0), other_c1, c(2), c(3)]),
        "chunk from another stream",
    );
}

#[test]
fn nothing_is_handed_on_from_a_chunk_that_fails() {
    let f = fixture();
    let plain = data(3 * CS as usize);
    let mut sealed = seal(&f.kms, &plain);
    let start = chunks_start(&sealed);
    let last = sealed.len() - 1;
    sealed[last] ^= 1; // damage the final chunk's tag
    let mut reader = UnsealReader::open(&f.kms, &sealed[..]).unwrap();
    let mut got = Vec::new();
    let err = reader.read_to_end(&mut got).unwrap_err();
    assert_eq!(
        got,
        plain[..2 * CS as usize],
        "only the authenticated chunks were handed on"
    );
    assert!(err.to_string().contains("chunk 2"), "{err}");
    // The reader stays failed.
    assert!(reader.read(&mut [0u8; 16]).is_err());
    assert!(start > 0);
}

#[test]
fn key_state_and_key_store_decide_whether_a_stream_opens() {
    let f = fixture();
    let plain = data(5000);
    let sealed = seal(&f.kms, &plain);

    f.kms.rotate_key("snap").unwrap();
    assert_eq!(
        unseal(&f.kms, &sealed).unwrap(),
        plain,
        "rotated key still opens older streams"
    );

    f.kms.disable_key("snap").unwrap();
    assert_eq!(
        unseal(&f.kms, &sealed).unwrap_err().kind(),
        ErrorKind::KeyUnusable
    );
    f.kms.enable_key("snap").unwrap();

    // Another key store (another machine, another passphrase) has no such key.
    let other = fixture();
    assert_eq!(
        unseal(&other.kms, &sealed).unwrap_err().kind(),
        ErrorKind::KeyNotFound
    );
}

#[test]
fn a_writer_dropped_without_finish_leaves_a_stream_that_does_not_open() {
    let f = fixture();
    let mut out = Vec::new();
    {
        let mut w = SealWriter::new(&f.kms, "snap", ctx(), &mut out, CS).unwrap();
        std::io::Write::write_all(&mut w, &data(3 * CS as usize)).unwrap();
    }
    assert_rejected(&f.kms, &out, "unfinished stream");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn random_sizes_and_write_splits_round_trip(len in 0usize..40_000, split in 1usize..9000, chunk_pow in 12u32..15) {
        let f = fixture();
        let plain = data(len);
        let mut out = Vec::new();
        let mut w = SealWriter::new(&f.kms, "snap", ctx(), &mut out, 1 << chunk_pow).unwrap();
        for part in plain.chunks(split) {
            std::io::Write::write_all(&mut w, part).unwrap();
        }
        w.finish().unwrap();
        prop_assert_eq!(unseal(&f.kms, &out).unwrap(), plain);
    }

    #[test]
    fn random_damage_is_rejected(len in 1usize..20_000, pos in any::<prop::sample::Index>(), mask in 1u8..=255) {
        let f = fixture();
        let mut sealed = seal(&f.kms, &data(len));
        let i = pos.index(sealed.len());
        sealed[i] ^= mask;
        prop_assert!(unseal(&f.kms, &sealed).is_err());
    }
}

/// A reader that fails after `ok_bytes`.
struct FailingReader {
    data: Vec<u8>,
    pos: usize,
    ok_bytes: usize,
}

impl Read for FailingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.ok_bytes {
            return Err(std::io::Error::other("disk on fire"));
        }
        let n = buf
            .len()
            .min(self.ok_bytes - self.pos)
            .min(self.data.len() - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[test]
fn a_read_error_fails_the_seal_and_never_yields_a_stream_that_opens() {
    let f = fixture();
    let plain = data(10 * CS as usize);
    for ok_bytes in [0, 1, CS as usize, 3 * CS as usize + 5] {
        let mut input = FailingReader {
            data: plain.clone(),
            pos: 0,
            ok_bytes,
        };
        let mut out = Vec::new();
        let err = seal_from(&f.kms, "snap", ctx(), &mut input, &mut out, CS).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Io, "{err}");
        assert!(err.to_string().contains("disk on fire"), "{err}");
        assert!(
            unseal(&f.kms, &out).is_err(),
            "a partial stream from a failed read must not open (ok_bytes {ok_bytes})"
        );
    }
}

/// A writer that fails after `ok_bytes`.
struct FailingWriter {
    written: usize,
    ok_bytes: usize,
}

impl std::io::Write for FailingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.written + buf.len() > self.ok_bytes {
            return Err(std::io::Error::other("volume full"));
        }
        self.written += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_write_error_stops_seal_and_unseal_with_its_cause() {
    let f = fixture();
    let plain = data(20 * CS as usize);
    let mut out = FailingWriter {
        written: 0,
        ok_bytes: 5 * CS as usize,
    };
    let err = seal_from(&f.kms, "snap", ctx(), &mut &plain[..], &mut out, CS).unwrap_err();
    assert!(err.to_string().contains("volume full"), "{err}");

    let sealed = seal(&f.kms, &plain);
    let mut out = FailingWriter {
        written: 0,
        ok_bytes: 5 * CS as usize,
    };
    let err = unseal_to(&f.kms, &sealed[..], &mut out).unwrap_err();
    assert!(err.to_string().contains("volume full"), "{err}");
}

#[test]
fn copy_to_after_a_partial_read_returns_the_rest_exactly() {
    let f = fixture();
    let plain = data(5 * CS as usize + 77);
    let sealed = seal(&f.kms, &plain);
    let mut reader = UnsealReader::open(&f.kms, &sealed[..]).unwrap();
    let mut head = vec![0u8; CS as usize + 10];
    reader.read_exact(&mut head).unwrap();
    let mut rest = Vec::new();
    let n = reader.copy_to(&mut rest).unwrap();
    assert_eq!(n as usize, rest.len());
    head.extend_from_slice(&rest);
    assert_eq!(head, plain);
}
