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
use std::sync::mpsc;

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

/// Authenticates and decrypts sealed chunk `index` in place, leaving its plaintext in
/// `buf`; `last` says whether the input ended right after it.
fn open_chunk(key: &LessSafeKey, index: u64, buf: &mut Vec<u8>, last: bool) -> Result<()> {
    if buf.len() < TAG_LEN {
        return Err(Error::tampered(if index == 0 && buf.is_empty() {
            "the stream ends right after its header (truncated)".to_string()
        } else {
            format!("chunk {index} is cut short (truncated)")
        }));
    }
    // Kept only for the last chunk, to tell a cut-off stream from an altered chunk.
    let backup = last.then(|| buf.clone());
    match key.open_in_place(chunk_nonce(index, last), Aad::empty(), buf) {
        Ok(plain) => {
            let len = plain.len();
            buf.truncate(len);
            Ok(())
        }
        Err(_) => {
            let cut_here = backup.is_some_and(|mut copy| {
                key.open_in_place(chunk_nonce(index, false), Aad::empty(), &mut copy)
                    .is_ok()
            });
            Err(Error::tampered(if cut_here {
                format!(
                    "the stream ends after chunk {index} but that is not its final chunk (truncated)"
                )
            } else {
                format!(
                    "chunk {index} fails authentication (altered, reordered, duplicated, or data added after the end)"
                )
            }))
        }
    }
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

/// The per-chunk half of sealing: the stream key, the chunk counter and the totals.
struct ChunkSealer {
    key: LessSafeKey,
    key_id: KeyId,
    chunk_size: usize,
    index: u64,
    plaintext_bytes: u64,
    sealed_bytes: u64,
}

impl ChunkSealer {
    /// Asks the KMS for a data key and builds the header (with its commitment) to write
    /// first.
    fn start(
        kms: &dyn Kms,
        key: &str,
        context: EncryptionContext,
        chunk_size: u32,
    ) -> Result<(Self, Vec<u8>)> {
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
        let mut header_bytes = header.bytes;
        header_bytes.extend_from_slice(&commitment);
        let sealer = ChunkSealer {
            key: stream_key,
            key_id,
            chunk_size: chunk_size as usize,
            index: 0,
            plaintext_bytes: 0,
            sealed_bytes: header_bytes.len() as u64,
        };
        Ok((sealer, header_bytes))
    }

    /// Seals `buf` (at most one chunk of plaintext) in place and appends its tag.
    fn seal(&mut self, buf: &mut Vec<u8>, last: bool) -> io::Result<()> {
        debug_assert!(buf.len() <= self.chunk_size);
        let plain = buf.len();
        let tag = self
            .key
            .seal_in_place_separate_tag(chunk_nonce(self.index, last), Aad::empty(), buf)
            .map_err(|_| io::Error::other("AES-GCM sealing failed"))?;
        buf.extend_from_slice(tag.as_ref());
        self.plaintext_bytes += plain as u64;
        self.sealed_bytes += buf.len() as u64;
        self.index += 1;
        Ok(())
    }

    fn summary(&self) -> SealSummary {
        SealSummary {
            key_id: self.key_id.clone(),
            plaintext_bytes: self.plaintext_bytes,
            chunks: self.index,
            sealed_bytes: self.sealed_bytes,
        }
    }
}

/// Seals everything written to it into `out`. Call [`finish`](Self::finish): a writer
/// dropped without it leaves a stream that fails to open (as truncated). For whole inputs,
/// [`seal_from`] is faster (it writes on a second thread).
pub struct SealWriter<W: Write> {
    out: W,
    sealer: ChunkSealer,
    buf: Vec<u8>,
}

impl<W: Write> std::fmt::Debug for SealWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealWriter")
            .field("chunk_size", &self.sealer.chunk_size)
            .field("index", &self.sealer.index)
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
        let (sealer, header) = ChunkSealer::start(kms, key, context, chunk_size)?;
        out.write_all(&header)
            .map_err(Error::io("cannot write the sealed stream's header"))?;
        Ok(SealWriter {
            out,
            buf: Vec::with_capacity(sealer.chunk_size + TAG_LEN),
            sealer,
        })
    }

    fn emit(&mut self, last: bool) -> io::Result<()> {
        self.sealer.seal(&mut self.buf, last)?;
        self.out.write_all(&self.buf)?;
        self.buf.clear();
        Ok(())
    }

    /// Seals what is buffered as the final chunk and returns the output and a summary.
    pub fn finish(mut self) -> Result<(W, SealSummary)> {
        self.emit(true)
            .and_then(|_| self.out.flush())
            .map_err(|e| Error::from_io(e, "cannot write the sealed stream"))?;
        let summary = self.sealer.summary();
        Ok((self.out, summary))
    }
}

impl<W: Write> Write for SealWriter<W> {
    fn write(&mut self, mut data: &[u8]) -> io::Result<usize> {
        let total = data.len();
        let chunk_size = self.sealer.chunk_size;
        while !data.is_empty() {
            // A full buffer is sealed only once more data shows it is not the last chunk.
            if self.buf.len() == chunk_size {
                self.emit(false)?;
            }
            let take = (chunk_size - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
        }
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
        open_chunk(&self.key, self.index, &mut self.buf, last)?;
        self.plain_len = self.buf.len();
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

/// Buffers the pipeline owns in all: bounded memory (this many chunks), enough to keep
/// the reader, the crypto and the writer busy at once.
const PIPELINE_BUFFERS: usize = 8;
/// Chunks queued between two stages.
const PIPELINE_DEPTH: usize = 2;

/// Reads up to `n` bytes from `r` into the empty `buf`; returns how many were read.
fn fill(r: &mut impl Read, buf: &mut Vec<u8>, n: usize) -> io::Result<usize> {
    buf.resize(n, 0);
    let got = read_full(r, buf)?;
    buf.truncate(got);
    Ok(got)
}

/// A three-stage pipeline over a fixed pool of buffers: a reader thread cuts `input` into
/// pieces of `piece` bytes (every piece but the last is full; an empty input is one empty
/// last piece), `transform(piece, last)` runs on the calling thread, and a writer thread
/// writes `prefix` and then each transformed piece to `out`. Reading, crypto and writing
/// overlap; memory stays at `PIPELINE_BUFFERS` buffers of `capacity` bytes. Any stage's
/// failure stops the others; a read error is reported as such, never taken for the end.
fn pipeline<R, W>(
    input: &mut R,
    out: &mut W,
    piece: usize,
    capacity: usize,
    prefix: &[u8],
    mut transform: impl FnMut(&mut Vec<u8>, bool) -> Result<()>,
) -> Result<()>
where
    R: Read + Send,
    W: Write + Send,
{
    std::thread::scope(|scope| {
        let (pool_tx, pool_rx) = mpsc::sync_channel::<Vec<u8>>(PIPELINE_BUFFERS);
        for _ in 0..PIPELINE_BUFFERS {
            pool_tx
                .send(Vec::with_capacity(capacity))
                .expect("the pool holds every buffer");
        }
        let (read_tx, read_rx) = mpsc::sync_channel::<io::Result<Vec<u8>>>(PIPELINE_DEPTH);
        let (write_tx, write_rx) = mpsc::sync_channel::<Vec<u8>>(PIPELINE_DEPTH);

        scope.spawn(move || {
            let mut first = true;
            // Ends when the input ends, or when the pool or the consumer is gone.
            while let Ok(mut buf) = pool_rx.recv() {
                let got = match fill(input, &mut buf, piece) {
                    Ok(got) => got,
                    Err(e) => {
                        let _ = read_tx.send(Err(e));
                        return;
                    }
                };
                if got == 0 && !first {
                    return;
                }
                first = false;
                if read_tx.send(Ok(buf)).is_err() || got < piece {
                    return;
                }
            }
        });
        let writer = scope.spawn(move || -> io::Result<()> {
            out.write_all(prefix)?;
            for mut buf in write_rx {
                out.write_all(&buf)?;
                buf.clear();
                // The pool is gone only once the reader has stopped; a lost buffer is fine.
                let _ = pool_tx.send(buf);
            }
            out.flush()
        });

        let read_error = |e: io::Error| Error::io("cannot read the input")(e);
        let writer_gone =
            || Error::io("cannot write the output")(io::Error::other("the writer stopped"));
        let produced = (|| -> Result<()> {
            let Ok(first) = read_rx.recv() else {
                return Err(read_error(io::Error::other("the reader stopped")));
            };
            let mut current = first.map_err(read_error)?;
            loop {
                let next = match read_rx.recv() {
                    Ok(Ok(buf)) => Some(buf),
                    Ok(Err(e)) => return Err(read_error(e)),
                    Err(_) => None,
                };
                transform(&mut current, next.is_none())?;
                write_tx.send(current).map_err(|_| writer_gone())?;
                match next {
                    Some(buf) => current = buf,
                    None => return Ok(()),
                }
            }
        })();
        drop(write_tx);
        drop(read_rx);
        let written = writer
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the writer thread panicked")));
        match (produced, written) {
            // A write error stops the producer too: report the cause.
            (_, Err(e)) => Err(Error::io("cannot write the output")(e)),
            (produced, Ok(())) => produced,
        }
    })
}

impl<R: Read + Send> UnsealReader<R> {
    /// Copies all remaining plaintext to `out`; returns the bytes written. Reading,
    /// decrypting and writing run on three threads. On error, what was written to `out`
    /// must be discarded.
    pub fn copy_to(&mut self, out: &mut (impl Write + Send)) -> Result<u64> {
        let fresh = self.index == 0 && self.peeked.is_none() && self.failed.is_none();
        if !fresh {
            // Part-read already: go on chunk by chunk on this thread.
            let mut total = 0u64;
            loop {
                out.write_all(&self.buf[self.pos..self.plain_len])
                    .map_err(Error::io("cannot write the unsealed data"))?;
                total += (self.plain_len - self.pos) as u64;
                self.pos = self.plain_len;
                if self.finished {
                    return Ok(total);
                }
                if let Some(reason) = &self.failed {
                    return Err(Error::tampered(reason.clone()));
                }
                self.next_chunk()?;
            }
        }
        let key = &self.key;
        let mut index = 0u64;
        let mut total = 0u64;
        let piece = self.chunk_size + TAG_LEN;
        let result = pipeline(&mut self.inner, out, piece, piece, &[], |buf, last| {
            open_chunk(key, index, buf, last)?;
            index += 1;
            total += buf.len() as u64;
            Ok(())
        });
        self.index = index;
        match result {
            Ok(()) => {
                self.finished = true;
                Ok(total)
            }
            Err(e) => {
                if let Error::Tampered { reason } = &e {
                    self.failed = Some(reason.clone());
                }
                Err(e)
            }
        }
    }
}

/// Opens a sealed stream and copies all of its plaintext to `out`; returns the bytes
/// written. On error, what was written to `out` must be discarded.
pub fn unseal_to(
    kms: &dyn Kms,
    input: impl Read + Send,
    out: &mut (impl Write + Send),
) -> Result<u64> {
    UnsealReader::open(kms, input)?.copy_to(out)
}

/// Seals all of `input` into `out` under `key` and `context`. Reading, sealing and
/// writing run on three threads, in bounded memory.
pub fn seal_from(
    kms: &dyn Kms,
    key: &str,
    context: EncryptionContext,
    input: &mut (impl Read + Send),
    out: &mut (impl Write + Send),
    chunk_size: u32,
) -> Result<SealSummary> {
    let (mut sealer, header) = ChunkSealer::start(kms, key, context, chunk_size)?;
    let cs = sealer.chunk_size;
    pipeline(input, out, cs, cs + TAG_LEN, &header, |buf, last| {
        sealer.seal(buf, last).map_err(Error::io("cannot seal"))
    })?;
    Ok(sealer.summary())
}
