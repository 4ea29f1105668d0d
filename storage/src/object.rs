//! The object format: one immutable object per flush.
//!
//! Layout: the chunks, one per (topic, partition), ordered by (topic, partition), each the
//! concatenation of the client batches appended for that partition in arrival order; then a
//! footer indexing the chunks. The footer makes an object self-describing, so tools and the
//! compactor can read it without the metadata store.
//!
//! Footer (all integers big-endian):
//!
//! ```text
//! magic "SHLF" | version u16 | count u32 | count x entry | crc32c u32 | footer_len u32 | magic "SHLF"
//! entry = topic uuid [16] | partition i32 | position u64 | size u64 | offset_count i64 | max_timestamp i64
//! ```
//!
//! The CRC covers the footer from its first magic through the last entry; `footer_len` is
//! the footer's full size, so a reader finds the footer from the end of the object.

use std::collections::BTreeMap;

use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;
use uuid::Uuid;

const FOOTER_MAGIC: &[u8; 4] = b"SHLF";
const FOOTER_VERSION: u16 = 1;
/// magic + version + count.
const FOOTER_HEAD: usize = 4 + 2 + 4;
/// crc + footer_len + magic.
const FOOTER_TAIL: usize = 4 + 4 + 4;
const ENTRY_SIZE: usize = 16 + 4 + 8 + 8 + 8 + 8;

/// Why an object's footer could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ObjectError {
    #[error("object too short to hold a footer")]
    TooShort,
    #[error("object footer magic bytes are missing")]
    BadMagic,
    #[error("object footer length is invalid")]
    InvalidLength,
    #[error("unsupported object footer version {0}")]
    UnsupportedVersion(u16),
    #[error("object footer CRC-32C does not match")]
    CrcMismatch,
    #[error("object footer entry points outside the object's data")]
    ChunkOutOfBounds,
}

/// Where one partition's batches lie in an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkInfo {
    pub topic: Uuid,
    pub partition: i32,
    /// Byte position of the chunk from the start of the object.
    pub position: u64,
    pub size: u64,
    /// Offsets the chunk's batches occupy; the commit assigns the chunk its base offset.
    pub offset_count: i64,
    pub max_timestamp: i64,
}

#[derive(Debug, Default)]
struct PendingChunk {
    parts: Vec<Bytes>,
    size: u64,
    offset_count: i64,
    max_timestamp: i64,
}

/// Gathers client batches into one object, keeping the client's `Bytes` uncopied.
#[derive(Debug, Default)]
pub struct ObjectBuilder {
    /// Keyed by (topic, partition, run): the batcher appends everything of a partition to
    /// run 0; the compactor adds runs of one partition as separate chunks, keyed by their
    /// base offsets, so they stay in offset order.
    chunks: BTreeMap<(Uuid, i32, i64), PendingChunk>,
    len_bytes: u64,
}

impl ObjectBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds validated batches for one partition and returns their offset delta inside the
    /// partition's chunk: once the commit assigns the chunk a base offset, these batches
    /// start at base + delta.
    pub fn append(
        &mut self,
        topic: Uuid,
        partition: i32,
        batches: Bytes,
        offset_count: i64,
        max_timestamp: i64,
    ) -> i64 {
        self.append_run(topic, partition, 0, batches, offset_count, max_timestamp)
    }

    /// Like [`Self::append`], but into the chunk of `run` of the partition: the compactor
    /// writes each contiguous offset range of a partition as a chunk of its own (its index
    /// row), with `run` its base offset.
    pub fn append_run(
        &mut self,
        topic: Uuid,
        partition: i32,
        run: i64,
        batches: Bytes,
        offset_count: i64,
        max_timestamp: i64,
    ) -> i64 {
        let chunk = self
            .chunks
            .entry((topic, partition, run))
            .or_insert_with(|| PendingChunk {
                max_timestamp: i64::MIN,
                ..PendingChunk::default()
            });
        let delta = chunk.offset_count;
        let len = batches.len() as u64;
        chunk.parts.push(batches);
        chunk.size += len;
        chunk.offset_count += offset_count;
        chunk.max_timestamp = chunk.max_timestamp.max(max_timestamp);
        self.len_bytes += len;
        delta
    }

    /// Batch bytes appended so far (the footer is not counted).
    pub fn len_bytes(&self) -> u64 {
        self.len_bytes
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Lays out the chunks and encodes the footer.
    pub fn finish(self) -> BuiltObject {
        let mut parts =
            Vec::with_capacity(self.chunks.values().map(|c| c.parts.len()).sum::<usize>() + 1);
        let mut chunks = Vec::with_capacity(self.chunks.len());
        let mut position = 0;
        for ((topic, partition, _), chunk) in self.chunks {
            chunks.push(ChunkInfo {
                topic,
                partition,
                position,
                size: chunk.size,
                offset_count: chunk.offset_count,
                max_timestamp: chunk.max_timestamp,
            });
            position += chunk.size;
            parts.extend(chunk.parts);
        }
        let footer = encode_footer(&chunks);
        let size = position + footer.len() as u64;
        parts.push(footer);
        BuiltObject {
            parts,
            chunks,
            size,
        }
    }
}

/// A finished object, ready to PUT.
#[derive(Debug, Clone)]
pub struct BuiltObject {
    /// The object's bytes in order: the client batches, chunk after chunk, then the footer.
    pub parts: Vec<Bytes>,
    /// The chunks in layout order, as recorded in the footer.
    pub chunks: Vec<ChunkInfo>,
    /// Total object size in bytes.
    pub size: u64,
}

impl BuiltObject {
    /// Copies chunk `index` into one buffer, e.g. to fill the read cache with what was just
    /// written.
    ///
    /// Always a fresh copy, so a cached chunk holds exactly its own bytes rather than
    /// pinning the clients' whole request buffers. Panics if `index` is out of range.
    pub fn chunk_data(&self, index: usize) -> Bytes {
        let chunk = &self.chunks[index];
        let (start, end) = (chunk.position, chunk.position + chunk.size);
        let mut out = BytesMut::with_capacity(chunk.size as usize);
        let mut part_start = 0u64;
        for part in &self.parts {
            let part_end = part_start + part.len() as u64;
            if part_end > start && part_start < end {
                let from = start.saturating_sub(part_start) as usize;
                let to = (end.min(part_end) - part_start) as usize;
                out.extend_from_slice(&part[from..to]);
            }
            if part_end >= end {
                break;
            }
            part_start = part_end;
        }
        out.freeze()
    }
}

fn encode_footer(chunks: &[ChunkInfo]) -> Bytes {
    let len = FOOTER_HEAD + chunks.len() * ENTRY_SIZE + FOOTER_TAIL;
    let mut buf = BytesMut::with_capacity(len);
    buf.put_slice(FOOTER_MAGIC);
    buf.put_u16(FOOTER_VERSION);
    buf.put_u32(chunks.len() as u32);
    for chunk in chunks {
        buf.put_slice(chunk.topic.as_bytes());
        buf.put_i32(chunk.partition);
        buf.put_u64(chunk.position);
        buf.put_u64(chunk.size);
        buf.put_i64(chunk.offset_count);
        buf.put_i64(chunk.max_timestamp);
    }
    buf.put_u32(crc32c::crc32c(&buf));
    buf.put_u32(len as u32);
    buf.put_slice(FOOTER_MAGIC);
    buf.freeze()
}

/// Reads the chunk index back from a whole object. Corrupt input yields an error, never a
/// panic.
pub fn decode_footer(object: &[u8]) -> Result<Vec<ChunkInfo>, ObjectError> {
    let tail_start = object
        .len()
        .checked_sub(FOOTER_TAIL)
        .ok_or(ObjectError::TooShort)?;
    let tail = &object[tail_start..];
    if &tail[8..12] != FOOTER_MAGIC {
        return Err(ObjectError::BadMagic);
    }
    let footer_len = u32::from_be_bytes(take(&tail[4..8])) as usize;
    if footer_len < FOOTER_HEAD + FOOTER_TAIL {
        return Err(ObjectError::InvalidLength);
    }
    let footer_start = object
        .len()
        .checked_sub(footer_len)
        .ok_or(ObjectError::InvalidLength)?;
    let footer = &object[footer_start..];
    if &footer[..4] != FOOTER_MAGIC {
        return Err(ObjectError::BadMagic);
    }
    let version = u16::from_be_bytes(take(&footer[4..6]));
    if version != FOOTER_VERSION {
        return Err(ObjectError::UnsupportedVersion(version));
    }
    let covered = &footer[..footer_len - FOOTER_TAIL];
    if crc32c::crc32c(covered) != u32::from_be_bytes(take(&tail[..4])) {
        return Err(ObjectError::CrcMismatch);
    }
    let count = u32::from_be_bytes(take(&footer[6..10])) as usize;
    let entries = &covered[FOOTER_HEAD..];
    if count.checked_mul(ENTRY_SIZE) != Some(entries.len()) {
        return Err(ObjectError::InvalidLength);
    }
    entries
        .chunks_exact(ENTRY_SIZE)
        .map(|e| {
            let chunk = ChunkInfo {
                topic: Uuid::from_bytes(take(&e[..16])),
                partition: i32::from_be_bytes(take(&e[16..20])),
                position: u64::from_be_bytes(take(&e[20..28])),
                size: u64::from_be_bytes(take(&e[28..36])),
                offset_count: i64::from_be_bytes(take(&e[36..44])),
                max_timestamp: i64::from_be_bytes(take(&e[44..52])),
            };
            match chunk.position.checked_add(chunk.size) {
                Some(end) if end <= footer_start as u64 => Ok(chunk),
                _ => Err(ObjectError::ChunkOutOfBounds),
            }
        })
        .collect()
}

/// Converts a slice of known length into an array; callers slice exactly `N` bytes.
fn take<const N: usize>(s: &[u8]) -> [u8; N] {
    let mut out = [0; N];
    out.copy_from_slice(s);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{self, tests::encode_batch};
    use kafka_protocol::records::Compression;

    fn concat(parts: &[Bytes]) -> Vec<u8> {
        parts.iter().flat_map(|p| p.iter().copied()).collect()
    }

    fn sample() -> (BuiltObject, Uuid, Uuid) {
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let mut builder = ObjectBuilder::new();
        assert!(builder.is_empty());
        let batch = |n, ts| Bytes::from(encode_batch(n, ts, Compression::None));
        // Appended out of (topic, partition) order, and interleaved.
        assert_eq!(builder.append(b, 0, batch(2, 50), 2, 51), 0);
        assert_eq!(builder.append(a, 1, batch(3, 10), 3, 12), 0);
        assert_eq!(builder.append(a, 0, batch(1, 5), 1, 5), 0);
        assert_eq!(builder.append(a, 1, batch(4, 1), 4, 4), 3);
        assert_eq!(builder.append(a, 1, batch(1, 20), 1, 20), 7);
        assert!(!builder.is_empty());
        let expected_len = [2, 3, 1, 4, 1]
            .iter()
            .map(|&n| encode_batch(n, 0, Compression::None).len() as u64)
            .sum::<u64>();
        assert_eq!(builder.len_bytes(), expected_len);
        (builder.finish(), a, b)
    }

    #[test]
    fn builds_and_decodes_footer() {
        let (object, a, b) = sample();
        let keys: Vec<_> = object
            .chunks
            .iter()
            .map(|c| (c.topic, c.partition))
            .collect();
        assert_eq!(keys, [(a, 0), (a, 1), (b, 0)]);
        let a1 = object.chunks[1];
        assert_eq!((a1.offset_count, a1.max_timestamp), (8, 20));
        assert_eq!(object.parts.len(), 6);

        let bytes = concat(&object.parts);
        assert_eq!(bytes.len() as u64, object.size);
        assert_eq!(decode_footer(&bytes).unwrap(), object.chunks);

        for (i, chunk) in object.chunks.iter().enumerate() {
            let range = chunk.position as usize..(chunk.position + chunk.size) as usize;
            let data = object.chunk_data(i);
            assert_eq!(&data[..], &bytes[range]);
            let v = batch::validate(&data, 1 << 20).unwrap();
            assert_eq!(v.offset_count, chunk.offset_count);
            assert_eq!(v.max_timestamp, chunk.max_timestamp);
        }
    }

    #[test]
    fn empty_object_round_trips() {
        let object = ObjectBuilder::new().finish();
        assert!(object.chunks.is_empty());
        assert_eq!(decode_footer(&concat(&object.parts)).unwrap(), []);
    }

    #[test]
    fn corrupt_footers_are_errors() {
        let (object, _, _) = sample();
        let bytes = concat(&object.parts);
        let footer_start = bytes.len() - object.parts.last().unwrap().len();

        // Every single-byte change inside the footer is detected.
        for at in footer_start..bytes.len() {
            let mut bad = bytes.clone();
            bad[at] ^= 0x01;
            assert!(decode_footer(&bad).is_err(), "flip at {at} accepted");
        }
        // Every truncation fails without panicking.
        for len in 0..bytes.len() {
            assert!(decode_footer(&bytes[..len]).is_err());
        }
        assert_eq!(decode_footer(b"short"), Err(ObjectError::TooShort));

        let mut bad = bytes.clone();
        let n = bad.len();
        bad[n - 8..n - 4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(decode_footer(&bad), Err(ObjectError::InvalidLength));

        // A footer whose CRC matches but whose entry points past the data.
        let mut chunks = object.chunks.clone();
        chunks[0].size = u64::MAX;
        let mut bad = bytes[..footer_start].to_vec();
        bad.extend_from_slice(&encode_footer(&chunks));
        assert_eq!(decode_footer(&bad), Err(ObjectError::ChunkOutOfBounds));
    }
}
