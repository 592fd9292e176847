//! The sealed-stream format: arbitrarily large data encrypted in bounded memory, with any
//! alteration, truncation, reordering or duplication detected. The byte layout is specified
//! in `docs/sealed-stream.md`; in short:
//!
//! ```text
//! header: magic(8) version(1) suite(1) chunk_size(4) salt(32)
//!         key_id_len(2) key_id  wrapped_len(2) wrapped_data_key  context_len(4) context
//!         commitment(32)
//! chunks: ciphertext ‖ tag(16), every chunk but the last holding exactly chunk_size bytes
//! ```
//!
//! The data key comes from the KMS; the stream key and a key commitment are derived from it
//! with HKDF-SHA-256 over the salt and a hash of the header, so the header is authenticated
//! and nonces never repeat across streams. Chunk `i` uses the nonce `0⁽³⁾ ‖ i (u64 BE) ‖
//! last`, where `last` is 1 only on the final chunk: a stream cut at a chunk boundary fails.
//!
//! [`UnsealReader`] yields plaintext chunk by chunk, each authenticated before it is handed
//! on; the stream as a whole is valid only once `read` has returned `Ok(0)`. Callers that
//! write the plaintext somewhere must treat an error at any point as "discard everything"
//! (the CLI writes to a temp file and renames it only on success).

use std::io::{self, Read, Write};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::digest;
use zeroize::Zeroizing;

use crate::primitives::{TAG_LEN, constant_time_eq, hkdf_sha256};
use crate::{DataKeySpec, EncryptionContext, Error, KeyId, Kms, Result, WrappedKey};

/// The first 8 bytes of every sealed stream (the high byte and newline catch text-mode
/// mangling, as PNG's signature does).
pub const MAGIC: [u8; 8] = *b"\x89PGSEAL\n";
/// The format version this code writes and reads.
pub const FORMAT_VERSION: u8 = 1;
/// Suite 1: AES-256-GCM, HKDF-SHA-256, 32-byte key commitment.
pub const SUITE_AES256GCM_HKDF_SHA256: u8 = 1;
/// The default plaintext bytes per chunk (1 MiB).
pub const DEFAULT_CHUNK_SIZE: u32 = 1 << 20;
/// The smallest chunk size accepted (4 KiB).
pub const MIN_CHUNK_SIZE: u32 = 1 << 12;
/// The largest chunk size accepted (16 MiB).
pub const MAX_CHUNK_SIZE: u32 = 1 << 24;
const SALT_LEN: usize = 32;
const COMMITMENT_LEN: usize = 32;
const MAX_KEY_ID_LEN: usize = 255;
const MAX_WRAPPED_LEN: usize = 1024;
const MAX_CONTEXT_LEN: usize = 64 * 1024;
const KEY_INFO: &[u8] = b"pgseal/stream/v1/key";
const COMMITMENT_INFO: &[u8] = b"pgseal/stream/v1/commitment";

/// What a stream's header says.
#[derive(Debug, Clone)]
pub struct StreamHeader {
    /// The KMS key the data key is wrapped under.
    pub key_id: KeyId,
    /// The wrapped data key.
    pub wrapped_key: WrappedKey,
    /// The encryption context the data key is bound to.
    pub context: EncryptionContext,
    /// Plaintext bytes per chunk.
    pub chunk_size: u32,
    salt: [u8; SALT_LEN],
    /// The header's bytes up to the commitment, as hashed into the key derivation.
    bytes: Vec<u8>,
}

impl StreamHeader {
    fn encode(
        key_id: &KeyId,
        wrapped: &WrappedKey,
        context: &EncryptionContext,
        chunk_size: u32,
        salt: [u8; SALT_LEN],
    ) -> Self {
        let ctx = context.canonical_bytes();
        let mut b = Vec::with_capacity(64 + key_id.0.len() + wrapped.as_bytes().len() + ctx.len());
        b.extend_from_slice(&MAGIC);
        b.push(FORMAT_VERSION);
        b.push(SUITE_AES256GCM_HKDF_SHA256);
        b.extend_from_slice(&chunk_size.to_be_bytes());
        b.extend_from_slice(&salt);
        b.extend_from_slice(&(key_id.0.len() as u16).to_be_bytes());
        b.extend_from_slice(key_id.0.as_bytes());
        b.extend_from_slice(&(wrapped.as_bytes().len() as u16).to_be_bytes());
        b.extend_from_slice(wrapped.as_bytes());
        b.extend_from_slice(&(ctx.len() as u32).to_be_bytes());
        b.extend_from_slice(&ctx);
        StreamHeader {
            key_id: key_id.clone(),
            wrapped_key: wrapped.clone(),
            context: context.clone(),
            chunk_size,
            salt,
            bytes: b,
        }
    }

    /// Reads and checks a header (everything up to the commitment, which is returned).
    fn read(r: &mut impl Read) -> Result<(Self, [u8; COMMITMENT_LEN])> {
        let mut bytes = Vec::new();
        let mut magic = [0u8; 8];
        let got = read_full(r, &mut magic).map_err(Error::io("cannot read the sealed stream"))?;
        if got < magic.len() || magic != MAGIC {
            return Err(Error::NotSealed {
                reason: "it does not start with the pgseal stream signature".into(),
            });
        }
        bytes.extend_from_slice(&magic);
        let mut take = |n: usize, what: &str| -> Result<Vec<u8>> {
            let mut buf = vec![0u8; n];
            let got = read_full(r, &mut buf).map_err(Error::io("cannot read the sealed stream"))?;
            if got < n {
                return Err(Error::tampered(format!(
                    "the header is truncated (in the {what})"
                )));
            }
            bytes.extend_from_slice(&buf);
            Ok(buf)
        };
        let fixed = take(2 + 4 + SALT_LEN, "fixed fields")?;
        if fixed[0] != FORMAT_VERSION || fixed[1] != SUITE_AES256GCM_HKDF_SHA256 {
            return Err(Error::tampered(format!(
                "unknown format version {} / suite {} (this pgseal reads {FORMAT_VERSION}/{SUITE_AES256GCM_HKDF_SHA256})",
                fixed[0], fixed[1]
            )));
        }
        let chunk_size = u32::from_be_bytes(fixed[2..6].try_into().expect("4 bytes"));
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
            return Err(Error::tampered(format!(
                "the header's chunk size {chunk_size} is out of range"
            )));
        }
        let salt: [u8; SALT_LEN] = fixed[6..].try_into().expect("32 bytes");
        let key_id_len =
            u16::from_be_bytes(take(2, "key id length")?.try_into().expect("2 bytes")) as usize;
        if key_id_len == 0 || key_id_len > MAX_KEY_ID_LEN {
            return Err(Error::tampered(
                "the header's key id length is out of range",
            ));
        }
        let key_id = String::from_utf8(take(key_id_len, "key id")?)
            .map_err(|_| Error::tampered("the header's key id is not text"))?;
        let wrapped_len =
            u16::from_be_bytes(take(2, "wrapped key length")?.try_into().expect("2 bytes"))
                as usize;
        if wrapped_len == 0 || wrapped_len > MAX_WRAPPED_LEN {
            return Err(Error::tampered(
                "the header's wrapped key length is out of range",
            ));
        }
        let wrapped = WrappedKey::from_bytes(take(wrapped_len, "wrapped key")?);
        let ctx_len =
            u32::from_be_bytes(take(4, "context length")?.try_into().expect("4 bytes")) as usize;
        if ctx_len > MAX_CONTEXT_LEN {
            return Err(Error::tampered(
                "the header's encryption context length is out of range",
            ));
        }
        let context =
            EncryptionContext::from_canonical_bytes(&take(ctx_len, "encryption context")?)
                .ok_or_else(|| Error::tampered("the header's encryption context is malformed"))?;
        let mut commitment = [0u8; COMMITMENT_LEN];
        let got =
            read_full(r, &mut commitment).map_err(Error::io("cannot read the sealed stream"))?;
        if got < COMMITMENT_LEN {
            return Err(Error::tampered(
                "the header is truncated (in the key commitment)",
            ));
        }
        let key_id = KeyId(key_id);
        if wrapped.key_id().ok().as_ref() != Some(&key_id) {
            return Err(Error::tampered(
                "the header's key id does not match its wrapped data key",
            ));
        }
        Ok((
            StreamHeader {
                key_id,
                wrapped_key: wrapped,
                context,
                chunk_size,
                salt,
                bytes,
            },
            commitment,
        ))
    }

    /// Derives the stream key and the key commitment from the data key.
    fn derive(&self, data_key: &[u8]) -> (LessSafeKey, Zeroizing<Vec<u8>>) {
        let header_hash = digest::digest(&digest::SHA256, &self.bytes);
        let key = hkdf_sha256(data_key, &self.salt, &[KEY_INFO, header_hash.as_ref()]);
        let commitment = hkdf_sha256(
            data_key,
            &self.salt,
            &[COMMITMENT_INFO, header_hash.as_ref()],
        );
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key).expect("32-byte key"));
        (key, commitment)
    }
}

/// The nonce of chunk `index`.
fn chunk_nonce(index: u64, last: bool) -> Nonce {
    let mut n = [0u8; NONCE_LEN];
    n[3..11].copy_from_slice(&index.to_be_bytes());
    n[11] = u8::from(last);
    Nonce::assume_unique_for_key(n)
}

/// Reads until `buf` is full or the input ends; returns how many bytes were read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// What a finished sealed stream holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealSummary {
    /// The KMS key the data key is wrapped under.
    pub key_id: KeyId,
    /// Plaintext bytes sealed.
    pub plaintext_bytes: u64,
    /// Chunks written.
    pub chunks: u64,
    /// Bytes written in all (header, chunks, tags).
    pub sealed_bytes: u64,
}

/// Seals everything written to it into `out`. Call [`finish`](Self::finish): a writer
/// dropped without it leaves a stream that fails to open (as truncated).
pub struct SealWriter<W: Write> {
    out: W,
    key_id: KeyId,
    key: LessSafeKey,
    chunk_size: usize,
    buf: Vec<u8>,
    index: u64,
    plaintext_bytes: u64,
    sealed_bytes: u64,
}

impl<W: Write> std::fmt::Debug for SealWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealWriter")
            .field("chunk_size", &self.chunk_size)
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl<W: Write> SealWriter<W> {
    /// Starts a stream: asks the KMS for a data key under `key` bound to `context`, and
    /// writes the header to `out`.
    pub fn new(
        kms: &dyn Kms,
        key: &str,
        context: EncryptionContext,
        mut out: W,
        chunk_size: u32,
    ) -> Result<Self> {
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
            return Err(Error::InvalidInput(format!(
                "chunk size {chunk_size} is outside {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE}"
            )));
        }
        let generated = kms.generate_data_key(key, DataKeySpec::Aes256Gcm, &context)?;
        let key_id = generated.wrapped.key_id()?;
        let mut salt = [0u8; SALT_LEN];
        aws_lc_rs::rand::fill(&mut salt).expect("the system random generator never fails here");
        let header = StreamHeader::encode(&key_id, &generated.wrapped, &context, chunk_size, salt);
        let (stream_key, commitment) = header.derive(generated.plaintext.expose());
        out.write_all(&header.bytes)
            .and_then(|_| out.write_all(&commitment))
            .map_err(Error::io("cannot write the sealed stream's header"))?;
        Ok(SealWriter {
            out,
            key_id,
            key: stream_key,
            chunk_size: chunk_size as usize,
            buf: Vec::with_capacity(chunk_size as usize + TAG_LEN),
            index: 0,
            plaintext_bytes: 0,
            sealed_bytes: (header.bytes.len() + COMMITMENT_LEN) as u64,
        })
    }

    fn emit(&mut self, last: bool) -> io::Result<()> {
        let tag = self
            .key
            .seal_in_place_separate_tag(chunk_nonce(self.index, last), Aad::empty(), &mut self.buf)
            .map_err(|_| io::Error::other("AES-GCM sealing failed"))?;
        self.out.write_all(&self.buf)?;
        self.out.write_all(tag.as_ref())?;
        self.sealed_bytes += (self.buf.len() + TAG_LEN) as u64;
        self.buf.clear();
        self.index += 1;
        Ok(())
    }

    /// Seals what is buffered as the final chunk and returns the output and a summary.
    pub fn finish(mut self) -> Result<(W, SealSummary)> {
        self.emit(true)
            .and_then(|_| self.out.flush())
            .map_err(|e| Error::from_io(e, "cannot write the sealed stream"))?;
        let summary = SealSummary {
            key_id: self.key_id.clone(),
            plaintext_bytes: self.plaintext_bytes,
            chunks: self.index,
            sealed_bytes: self.sealed_bytes,
        };
        Ok((self.out, summary))
    }
}

impl<W: Write> Write for SealWriter<W> {
    fn write(&mut self, mut data: &[u8]) -> io::Result<usize> {
        let total = data.len();
        while !data.is_empty() {
            // A full buffer is sealed only once more data shows it is not the last chunk.
            if self.buf.len() == self.chunk_size {
                self.emit(false)?;
            }
            let take = (self.chunk_size - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
        }
        self.plaintext_bytes += total as u64;
        Ok(total)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Opens a sealed stream and yields its plaintext, chunk by chunk, each authenticated
/// before any of it is returned. See the module docs for what a caller must do on error.
pub struct UnsealReader<R: Read> {
    inner: R,
    header: StreamHeader,
    key: LessSafeKey,
    chunk_size: usize,
    /// The current chunk: ciphertext as read, then plaintext in `buf[..plain_len]`.
    buf: Vec<u8>,
    plain_len: usize,
    pos: usize,
    index: u64,
    /// One byte read past a full chunk, to learn whether that chunk is the last.
    peeked: Option<u8>,
    finished: bool,
    failed: Option<String>,
}

impl<R: Read> std::fmt::Debug for UnsealReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnsealReader")
            .field("key_id", &self.header.key_id)
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl<R: Read> UnsealReader<R> {
    /// Reads the header, unwraps the data key through the KMS and checks the key
    /// commitment. Nothing is decrypted before all of that holds.
    pub fn open(kms: &dyn Kms, mut inner: R) -> Result<Self> {
        let (header, commitment) = StreamHeader::read(&mut inner)?;
        let data_key = kms.decrypt(&header.wrapped_key, &header.context).map_err(|e| match e {
            Error::UnwrapFailed { key_id } => Error::tampered(format!(
                "the data key in the header does not open under KMS key {key_id} with the header's encryption context"
            )),
            other => other,
        })?;
        let (key, expected) = header.derive(data_key.expose());
        if !constant_time_eq(&expected, &commitment) {
            return Err(Error::tampered(
                "the key commitment does not match the data key",
            ));
        }
        let chunk_size = header.chunk_size as usize;
        Ok(UnsealReader {
            inner,
            key,
            chunk_size,
            buf: Vec::with_capacity(chunk_size + TAG_LEN),
            plain_len: 0,
            pos: 0,
            index: 0,
            peeked: None,
            finished: false,
            failed: None,
            header,
        })
    }

    /// The stream's header.
    pub fn header(&self) -> &StreamHeader {
        &self.header
    }

    /// Reads, authenticates and decrypts the next chunk into `buf`.
    fn next_chunk(&mut self) -> Result<()> {
        let full = self.chunk_size + TAG_LEN;
        self.buf.clear();
        self.buf.extend(self.peeked.take());
        let start = self.buf.len();
        self.buf.resize(full, 0);
        let got = read_full(&mut self.inner, &mut self.buf[start..])
            .map_err(Error::io("cannot read the sealed stream"))?;
        self.buf.truncate(start + got);
        let last = if self.buf.len() == full {
            let mut one = [0u8; 1];
            let more = read_full(&mut self.inner, &mut one)
                .map_err(Error::io("cannot read the sealed stream"))?;
            if more == 1 {
                self.peeked = Some(one[0]);
            }
            more == 0
        } else {
            true
        };
        if self.buf.len() < TAG_LEN {
            return Err(Error::tampered(if self.index == 0 && self.buf.is_empty() {
                "the stream ends right after its header (truncated)".to_string()
            } else {
                format!("chunk {} is cut short (truncated)", self.index)
            }));
        }
        // Kept only for the last chunk, to tell a cut-off stream from an altered chunk.
        let backup = last.then(|| self.buf.clone());
        match self
            .key
            .open_in_place(chunk_nonce(self.index, last), Aad::empty(), &mut self.buf)
        {
            Ok(plain) => self.plain_len = plain.len(),
            Err(_) => {
                let mut copy = backup.unwrap_or_default();
                let cut_here = last
                    && self
                        .key
                        .open_in_place(chunk_nonce(self.index, false), Aad::empty(), &mut copy)
                        .is_ok();
                return Err(Error::tampered(if cut_here {
                    format!(
                        "the stream ends after chunk {} but that is not its final chunk (truncated)",
                        self.index
                    )
                } else {
                    format!(
                        "chunk {} fails authentication (altered, reordered, duplicated, or data added after the end)",
                        self.index
                    )
                }));
            }
        }
        self.pos = 0;
        self.finished = last;
        self.index += 1;
        Ok(())
    }
}

impl<R: Read> Read for UnsealReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if let Some(reason) = &self.failed {
            return Err(Error::tampered(reason.clone()).into());
        }
        while self.pos == self.plain_len {
            if self.finished {
                return Ok(0);
            }
            if let Err(e) = self.next_chunk() {
                if let Error::Tampered { reason } = &e {
                    self.failed = Some(reason.clone());
                }
                self.plain_len = 0;
                self.pos = 0;
                return Err(e.into());
            }
        }
        let n = out.len().min(self.plain_len - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Opens a sealed stream and copies all of its plaintext to `out`; returns the bytes
/// written. On error, what was written to `out` must be discarded.
pub fn unseal_to(kms: &dyn Kms, input: impl Read, out: &mut impl Write) -> Result<u64> {
    let mut reader = UnsealReader::open(kms, input)?;
    io::copy(&mut reader, out).map_err(|e| Error::from_io(e, "cannot write the unsealed data"))
}

/// Seals all of `input` into `out` under `key` and `context`.
pub fn seal_from(
    kms: &dyn Kms,
    key: &str,
    context: EncryptionContext,
    input: &mut impl Read,
    out: impl Write,
    chunk_size: u32,
) -> Result<SealSummary> {
    let mut writer = SealWriter::new(kms, key, context, out, chunk_size)?;
    io::copy(input, &mut writer).map_err(|e| Error::from_io(e, "cannot read the data to seal"))?;
    Ok(writer.finish()?.1)
}
