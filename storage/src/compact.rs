//! Log compaction (`cleanup.policy=compact`) of stored record batches.
//!
//! Two passes, as in Kafka's log cleaner: a [`KeyIndex`] learns the latest offset of every
//! key over a partition range, then [`compact_chunk`] rewrites each chunk of that range
//! keeping only the latest record of each key.
//!
//! Kept records are carried over as the producer's bytes: only their offset and timestamp
//! deltas are rewritten, the key, value and headers are copied verbatim. A round trip
//! through `kafka_protocol::records::Record` would merge duplicate header keys (legal in
//! Kafka), refuse non-UTF-8 header keys and lose the LogAppendTime attribute, so only that
//! crate's compression codecs are used here.

use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::Range;

use bytes::{Bytes, BytesMut};
use kafka_protocol::compression::{Compressor, Gzip, Lz4, Snappy, Zstd};
use kafka_protocol::records::Compression;
use thiserror::Error;

use crate::batch::{self, BatchError, BatchHeader, HEADER_SIZE};
use crate::records::{self, Reader};

/// Header fields rewritten here (byte positions in the v2 batch header).
const BATCH_LENGTH_AT: usize = 8;
const CRC_AT: usize = 17;
/// The CRC-32C covers the batch from the attributes field to its end.
const ATTRIBUTES_AT: usize = 21;
const LAST_OFFSET_DELTA_AT: usize = 23;
const BASE_TIMESTAMP_AT: usize = 27;
const MAX_TIMESTAMP_AT: usize = 35;
const BASE_SEQUENCE_AT: usize = 53;
const RECORDS_COUNT_AT: usize = 57;
/// Bytes before the batchLength field's coverage starts (baseOffset + batchLength).
const LOG_OVERHEAD: usize = 12;
/// Set by Kafka's cleaner when baseTimestamp holds the delete horizon instead of the
/// first record's timestamp; such a base is kept as it is.
const DELETE_HORIZON_BIT: i16 = 1 << 6;
const NO_SEQUENCE: i32 = -1;

/// Why a chunk could not be indexed or compacted. Input is never trusted: every defect is
/// reported here, none panics.
#[derive(Debug, Error)]
pub enum CompactError {
    #[error("corrupt record batch: {0}")]
    Batch(#[from] BatchError),
    #[error("record batches are not contiguous: expected base offset {expected}, found {found}")]
    NotContiguous { expected: i64, found: i64 },
    #[error("undecodable records in the batch at offset {base_offset}: {reason}")]
    Records { base_offset: i64, reason: String },
    #[error("cannot encode the compacted batch at offset {base_offset}: {reason}")]
    Encode { base_offset: i64, reason: String },
}

/// The latest offset of every key over a partition range: pass one of compaction.
///
/// Keys are copied, so the index does not keep chunk buffers alive; it costs about the
/// size of the distinct keys plus some 40 bytes of map overhead per key.
#[derive(Debug, Default, Clone)]
pub struct KeyIndex {
    latest: HashMap<Box<[u8]>, i64>,
}

impl KeyIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds every keyed record of a chunk; the later offset wins, whatever the order in
    /// which chunks are added. Control batches are skipped: their keys are markers, not
    /// data.
    ///
    /// On error the index may already hold keys of the chunk's earlier batches; those
    /// offsets are real, but the chunk should then not be compacted.
    pub fn add_chunk(&mut self, chunk: &[u8]) -> Result<(), CompactError> {
        for item in chunk_batches(chunk) {
            let (header, range) = item?;
            if header.is_control() {
                continue;
            }
            let section = records_section(&chunk[range], &header)?;
            for record in parse_records(&section, &header)? {
                let Some(key) = record.key else { continue };
                let offset = header.base_offset + i64::from(record.offset_delta);
                match self.latest.get_mut(key) {
                    Some(latest) => *latest = (*latest).max(offset),
                    None => {
                        self.latest.insert(key.into(), offset);
                    }
                }
            }
        }
        Ok(())
    }

    /// The latest offset seen for `key`.
    pub fn latest_offset(&self, key: &[u8]) -> Option<i64> {
        self.latest.get(key).copied()
    }

    pub fn len(&self) -> usize {
        self.latest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.latest.is_empty()
    }
}

/// Settings of one compaction run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactOptions {
    /// Tombstones (records with a key and a null value) whose timestamp is below this (ms
    /// since the epoch) are dropped even when they are the latest for their key
    /// (`delete.retention.ms` has passed), so deleted keys eventually vanish.
    pub tombstone_cutoff_ms: i64,
}

/// One chunk after compaction, ready to be stored and indexed in place of the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactedChunk {
    /// The rewritten batches. They tile `base_offset..=last_offset` without gaps, so
    /// `batch::patch_base_offsets(data, base_offset)` reproduces their offsets.
    pub data: Bytes,
    /// Base offset of the first output batch: the offset of the first kept record, or of
    /// the first batch when that one is copied whole. Offsets of the input chunk below it
    /// no longer exist.
    pub base_offset: i64,
    /// Last offset covered, equal to the input chunk's last offset.
    pub last_offset: i64,
    /// Largest maxTimestamp of the output batches.
    pub max_timestamp: i64,
    /// Records kept, control records included.
    pub records_kept: u64,
    pub records_dropped: u64,
}

/// Pass two: rewrites one chunk keeping, for each key, only the record at the key's latest
/// offset in `index`.
///
/// A keyed record is dropped when `index` knows a later offset for its key, or when it is a
/// tombstone older than [`CompactOptions::tombstone_cutoff_ms`]; keys the index does not
/// know are kept, so records newer than the indexed range survive. Records without a key
/// and control batches are kept. A batch that keeps all its records is copied byte for
/// byte; one that keeps some is rewritten with the same attributes and producer fields,
/// its base offset moved to its first kept record; one that keeps none disappears. Each
/// output batch's lastOffsetDelta is then extended up to the next output batch, and the
/// last one to the input's last offset, so the spans stay contiguous.
///
/// Returns `None` when nothing is kept. `chunk` must hold the real base offsets.
pub fn compact_chunk(
    chunk: &[u8],
    index: &KeyIndex,
    options: &CompactOptions,
) -> Result<Option<CompactedChunk>, CompactError> {
    let mut out = Vec::with_capacity(chunk.len());
    // Byte range and base offset of each output batch, to tile them at the end.
    let mut spans: Vec<(Range<usize>, i64)> = Vec::new();
    let mut last_offset = None;
    let mut kept = 0u64;
    let mut dropped = 0u64;
    let mut max_timestamp = i64::MIN;

    for item in chunk_batches(chunk) {
        let (header, range) = item?;
        let input = &chunk[range];
        last_offset = Some(header.base_offset + i64::from(header.last_offset_delta));
        let start = out.len();
        if header.is_control() {
            out.extend_from_slice(input);
            spans.push((start..out.len(), header.base_offset));
            kept += records_count(&header);
            max_timestamp = max_timestamp.max(header.max_timestamp);
            continue;
        }
        let section = records_section(input, &header)?;
        let records = parse_records(&section, &header)?;
        let retained: Vec<&RawRecord<'_>> = records
            .iter()
            .filter(|record| is_kept(record, &header, index, options))
            .collect();
        kept += retained.len() as u64;
        dropped += (records.len() - retained.len()) as u64;
        if retained.len() == records.len() {
            out.extend_from_slice(input);
            spans.push((start..out.len(), header.base_offset));
            max_timestamp = max_timestamp.max(header.max_timestamp);
        } else if let Some(first) = retained.first() {
            let (base_offset, batch_max_timestamp) =
                rewrite_batch(&mut out, input, &header, first, &retained)?;
            spans.push((start..out.len(), base_offset));
            max_timestamp = max_timestamp.max(batch_max_timestamp);
        }
    }

    let (Some(last_offset), Some(&(_, base_offset))) = (last_offset, spans.first()) else {
        return Ok(None);
    };
    tile(&mut out, &spans, last_offset)?;
    Ok(Some(CompactedChunk {
        data: Bytes::from(out),
        base_offset,
        last_offset,
        max_timestamp,
        records_kept: kept,
        records_dropped: dropped,
    }))
}

/// Iterates over the batches of a chunk, checking each (magic, CRC, counts, via
/// [`batch::validate`]) and that they tile their offsets contiguously: decisions rest on
/// absolute offsets, and a rewritten batch gets a fresh CRC that would hide corruption.
fn chunk_batches(
    chunk: &[u8],
) -> impl Iterator<Item = Result<(BatchHeader, Range<usize>), CompactError>> + '_ {
    let mut next_offset: Option<i64> = None;
    batch::batches(chunk).map(move |item| {
        let (header, range) = item?;
        batch::validate(&chunk[range.clone()], usize::MAX)?;
        if let Some(expected) = next_offset
            && expected != header.base_offset
        {
            return Err(CompactError::NotContiguous {
                expected,
                found: header.base_offset,
            });
        }
        next_offset = Some(
            header
                .base_offset
                .checked_add(header.offset_count())
                .ok_or(BatchError::InvalidRecordCount)?,
        );
        Ok((header, range))
    })
}

fn records_count(header: &BatchHeader) -> u64 {
    u64::try_from(header.records_count).unwrap_or(0)
}

fn is_kept(
    record: &RawRecord<'_>,
    header: &BatchHeader,
    index: &KeyIndex,
    options: &CompactOptions,
) -> bool {
    let Some(key) = record.key else {
        return true;
    };
    let offset = header.base_offset + i64::from(record.offset_delta);
    if index
        .latest_offset(key)
        .is_some_and(|latest| latest > offset)
    {
        return false;
    }
    let timestamp = if header.is_log_append_time() {
        header.max_timestamp
    } else {
        header.base_timestamp.wrapping_add(record.timestamp_delta)
    };
    !(record.is_tombstone && timestamp < options.tombstone_cutoff_ms)
}

/// Writes a batch holding only `retained` of `input`, `first` being the first of them, and
/// returns its base offset and maxTimestamp. Everything but the fields that depend on
/// which records are present is taken from the input header, so attributes (compression,
/// timestamp type, transactional), producer id/epoch and partition leader epoch stay.
fn rewrite_batch(
    out: &mut Vec<u8>,
    input: &[u8],
    header: &BatchHeader,
    first: &RawRecord<'_>,
    retained: &[&RawRecord<'_>],
) -> Result<(i64, i64), CompactError> {
    let encode_error = |reason: String| CompactError::Encode {
        base_offset: header.base_offset,
        reason,
    };
    let base_offset = header.base_offset + i64::from(first.offset_delta);
    let timestamp_shift = if header.attributes & DELETE_HORIZON_BIT != 0 {
        0
    } else {
        first.timestamp_delta
    };
    let base_timestamp = header.base_timestamp.wrapping_add(timestamp_shift);

    let mut records = Vec::new();
    let mut count = 0i32;
    let mut last_delta = 0;
    let mut max_timestamp = i64::MIN;
    for record in retained {
        let offset_delta = record.offset_delta - first.offset_delta;
        let timestamp_delta = record.timestamp_delta.wrapping_sub(timestamp_shift);
        max_timestamp = max_timestamp.max(base_timestamp.wrapping_add(timestamp_delta));
        write_record(&mut records, record, offset_delta, timestamp_delta)
            .map_err(|reason| encode_error(reason.to_string()))?;
        count += 1;
        last_delta = offset_delta;
    }
    if header.is_log_append_time() {
        max_timestamp = header.max_timestamp;
    }
    let base_sequence = if header.base_sequence == NO_SEQUENCE {
        NO_SEQUENCE
    } else {
        increment_sequence(header.base_sequence, first.offset_delta)
    };

    let start = out.len();
    out.extend_from_slice(&input[..HEADER_SIZE]);
    compress(out, codec(header)?, &records).map_err(encode_error)?;
    let batch = &mut out[start..];
    let batch_length = i32::try_from(batch.len() - LOG_OVERHEAD)
        .map_err(|_| encode_error("batch exceeds 2 GiB".to_string()))?;
    put(batch, 0, &base_offset.to_be_bytes());
    put(batch, BATCH_LENGTH_AT, &batch_length.to_be_bytes());
    put(batch, LAST_OFFSET_DELTA_AT, &last_delta.to_be_bytes());
    put(batch, BASE_TIMESTAMP_AT, &base_timestamp.to_be_bytes());
    put(batch, MAX_TIMESTAMP_AT, &max_timestamp.to_be_bytes());
    put(batch, BASE_SEQUENCE_AT, &base_sequence.to_be_bytes());
    put(batch, RECORDS_COUNT_AT, &count.to_be_bytes());
    set_crc(batch);
    Ok((base_offset, max_timestamp))
}

/// Kafka's sequence arithmetic: sequences wrap from `i32::MAX` to 0.
fn increment_sequence(sequence: i32, increment: i32) -> i32 {
    if sequence > i32::MAX - increment {
        increment - (i32::MAX - sequence) - 1
    } else {
        sequence + increment
    }
}

/// Extends each output batch's lastOffsetDelta to end right before the next one (the last
/// at `last_offset`), fixing the CRC of the batches that change.
fn tile(
    out: &mut [u8],
    spans: &[(Range<usize>, i64)],
    last_offset: i64,
) -> Result<(), CompactError> {
    for (i, (range, base_offset)) in spans.iter().enumerate() {
        let end = spans.get(i + 1).map_or(last_offset, |(_, next)| next - 1);
        let delta = i32::try_from(end - base_offset).map_err(|_| CompactError::Encode {
            base_offset: *base_offset,
            reason: format!("span to offset {end} exceeds what a batch can cover"),
        })?;
        let batch = &mut out[range.clone()];
        let field = &mut batch[LAST_OFFSET_DELTA_AT..LAST_OFFSET_DELTA_AT + 4];
        if field != delta.to_be_bytes() {
            field.copy_from_slice(&delta.to_be_bytes());
            set_crc(batch);
        }
    }
    Ok(())
}

fn put(batch: &mut [u8], at: usize, bytes: &[u8]) {
    batch[at..at + bytes.len()].copy_from_slice(bytes);
}

fn set_crc(batch: &mut [u8]) {
    let crc = crc32c::crc32c(&batch[ATTRIBUTES_AT..]);
    put(batch, CRC_AT, &crc.to_be_bytes());
}

fn codec(header: &BatchHeader) -> Result<Compression, CompactError> {
    records::codec(header).map_err(|reason| CompactError::Records {
        base_offset: header.base_offset,
        reason,
    })
}

/// The uncompressed records of one validated batch.
fn records_section<'a>(
    batch: &'a [u8],
    header: &BatchHeader,
) -> Result<Cow<'a, [u8]>, CompactError> {
    records::decompress(batch, header).map_err(|reason| CompactError::Records {
        base_offset: header.base_offset,
        reason,
    })
}

fn compress(out: &mut Vec<u8>, codec: Compression, records: &[u8]) -> Result<(), String> {
    let fill = |buf: &mut BytesMut| {
        buf.extend_from_slice(records);
        Ok(())
    };
    match codec {
        Compression::None => {
            out.extend_from_slice(records);
            Ok(())
        }
        Compression::Gzip => Gzip::compress(out, fill),
        Compression::Snappy => Snappy::compress(out, fill),
        Compression::Lz4 => Lz4::compress(out, fill),
        Compression::Zstd => Zstd::compress(out, fill),
    }
    .map_err(|e| format!("{e:#}"))
}

/// One record of a batch, borrowed from the batch's uncompressed records.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RawRecord<'a> {
    attributes: u8,
    timestamp_delta: i64,
    offset_delta: i32,
    key: Option<&'a [u8]>,
    /// A key and a null value: a delete marker.
    is_tombstone: bool,
    /// The key, value and headers as encoded, from the key length on.
    tail: &'a [u8],
}

/// Parses exactly the header's record count, checking every length and that offset deltas
/// increase within the batch's span, as Kafka's own record reader does.
fn parse_records<'a>(
    data: &'a [u8],
    header: &BatchHeader,
) -> Result<Vec<RawRecord<'a>>, CompactError> {
    parse_all(data, header).map_err(|reason| CompactError::Records {
        base_offset: header.base_offset,
        reason: reason.to_string(),
    })
}

fn parse_all<'a>(data: &'a [u8], header: &BatchHeader) -> Result<Vec<RawRecord<'a>>, &'static str> {
    let mut reader = Reader(data);
    let mut records = Vec::new();
    let mut previous_delta = -1;
    for _ in 0..header.records_count {
        let length = reader.varint()?;
        let body = reader.bytes(usize::try_from(length).map_err(|_| "negative record length")?)?;
        let record = parse_record(body)?;
        if record.offset_delta <= previous_delta || record.offset_delta > header.last_offset_delta {
            return Err("record offset deltas out of order or outside the batch");
        }
        previous_delta = record.offset_delta;
        records.push(record);
    }
    if !reader.0.is_empty() {
        return Err("bytes after the last record");
    }
    Ok(records)
}

fn parse_record(body: &[u8]) -> Result<RawRecord<'_>, &'static str> {
    let mut reader = Reader(body);
    let attributes = reader.u8()?;
    let timestamp_delta = reader.varlong()?;
    let offset_delta = reader.varint()?;
    let tail = reader.0;
    let key = reader.nullable_bytes()?;
    let value = reader.nullable_bytes()?;
    let headers = reader.varint()?;
    if headers < 0 {
        return Err("negative header count");
    }
    for _ in 0..headers {
        let key_length = reader.varint()?;
        reader.bytes(usize::try_from(key_length).map_err(|_| "negative header key length")?)?;
        reader.nullable_bytes()?;
    }
    if !reader.0.is_empty() {
        return Err("record longer than its fields");
    }
    Ok(RawRecord {
        attributes,
        timestamp_delta,
        offset_delta,
        key,
        is_tombstone: key.is_some() && value.is_none(),
        tail,
    })
}

/// Appends one record with new deltas, its length prefix recomputed.
fn write_record(
    out: &mut Vec<u8>,
    record: &RawRecord<'_>,
    offset_delta: i32,
    timestamp_delta: i64,
) -> Result<(), &'static str> {
    let mut body = Vec::with_capacity(record.tail.len() + 16);
    body.push(record.attributes);
    put_varlong(&mut body, timestamp_delta);
    put_varlong(&mut body, i64::from(offset_delta));
    body.extend_from_slice(record.tail);
    let length = i32::try_from(body.len()).map_err(|_| "record exceeds 2 GiB")?;
    put_varlong(out, i64::from(length));
    out.extend_from_slice(&body);
    Ok(())
}

/// Kafka's zigzag varint; an int32 varint is the same encoding limited to five bytes.
fn put_varlong(out: &mut Vec<u8>, value: i64) {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    while zigzag >= 0x80 {
        out.push(zigzag as u8 | 0x80);
        zigzag >>= 7;
    }
    out.push(zigzag as u8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{batches, patch_base_offsets, set_log_append_time, validate};
    use crate::records::COMPRESSION_MASK;
    use kafka_protocol::indexmap::IndexMap;
    use kafka_protocol::protocol::StrBytes;
    use kafka_protocol::records::{
        Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };

    const CODECS: [Compression; 5] = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];
    const KEEP_TOMBSTONES: CompactOptions = CompactOptions {
        tombstone_cutoff_ms: i64::MIN,
    };

    /// A record as a consumer sees it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Seen {
        offset: i64,
        key: Option<Bytes>,
        value: Option<Bytes>,
        headers: IndexMap<StrBytes, Option<Bytes>>,
        timestamp: i64,
    }

    /// A record at `delta` within its batch, with one header naming its key and value.
    fn rec(delta: i64, key: Option<&str>, value: Option<&str>, ts: i64) -> Record {
        let mut headers = IndexMap::new();
        headers.insert(
            StrBytes::from_string(format!("h{delta}")),
            Some(Bytes::from(format!("{key:?}={value:?}"))),
        );
        Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: delta,
            sequence: 0,
            timestamp: ts,
            key: key.map(|k| Bytes::from(k.to_string())),
            value: value.map(|v| Bytes::from(v.to_string())),
            headers,
        }
    }

    /// Encodes one batch; sequences follow offsets from `base_sequence` so the encoder
    /// does not split it.
    fn encode(mut records: Vec<Record>, base_sequence: i32, compression: Compression) -> Vec<u8> {
        let first = records[0].offset;
        for record in &mut records {
            record.sequence = base_sequence + (record.offset - first) as i32;
        }
        let mut buf = BytesMut::new();
        let options = RecordEncodeOptions {
            version: 2,
            compression,
        };
        RecordBatchEncoder::encode(&mut buf, &records, &options).unwrap();
        assert_eq!(batches(&buf).count(), 1);
        buf.to_vec()
    }

    fn batch(records: Vec<Record>, compression: Compression) -> Vec<u8> {
        encode(records, NO_SEQUENCE, compression)
    }

    /// Concatenates batches and gives them real base offsets from `base`.
    fn chunk(batches: &[&[u8]], base: i64) -> Vec<u8> {
        let mut buf = batches.concat();
        patch_base_offsets(&mut buf, base).unwrap();
        buf
    }

    fn decode(data: &[u8]) -> Vec<Seen> {
        RecordBatchDecoder::decode_all(&mut Bytes::copy_from_slice(data))
            .unwrap()
            .into_iter()
            .flat_map(|set| set.records)
            .map(|r| Seen {
                offset: r.offset,
                key: r.key,
                value: r.value,
                headers: r.headers,
                timestamp: r.timestamp,
            })
            .collect()
    }

    fn index_of(chunks: &[&[u8]]) -> KeyIndex {
        let mut index = KeyIndex::new();
        for chunk in chunks {
            index.add_chunk(chunk).unwrap();
        }
        index
    }

    /// What compaction must keep of `chunk`, computed from decoded records.
    fn model(all: &[&[u8]], chunk: &[u8], cutoff: i64) -> Vec<Seen> {
        let mut latest: HashMap<Bytes, i64> = HashMap::new();
        for record in all.iter().flat_map(|c| decode(c)) {
            if let Some(key) = record.key {
                let entry = latest.entry(key).or_insert(record.offset);
                *entry = (*entry).max(record.offset);
            }
        }
        decode(chunk)
            .into_iter()
            .filter(|r| match &r.key {
                None => true,
                Some(key) => {
                    latest[key] == r.offset && !(r.value.is_none() && r.timestamp < cutoff)
                }
            })
            .collect()
    }

    fn last_offset(chunk: &[u8]) -> i64 {
        let (header, _) = batches(chunk).last().unwrap().unwrap();
        header.base_offset + i64::from(header.last_offset_delta)
    }

    /// Checks everything a reader relies on and returns the output batches.
    fn check(out: &CompactedChunk, input: &[u8]) -> Vec<Vec<u8>> {
        let summary = validate(&out.data, usize::MAX).unwrap();
        assert_eq!(out.last_offset, last_offset(input));
        assert_eq!(summary.offset_count, out.last_offset - out.base_offset + 1);
        assert_eq!(summary.records as u64, out.records_kept);
        assert_eq!(summary.max_timestamp, out.max_timestamp);
        let mut repatched = out.data.to_vec();
        patch_base_offsets(&mut repatched, out.base_offset).unwrap();
        assert_eq!(repatched, out.data, "batches do not tile contiguously");

        let mut next = out.base_offset;
        let mut output = Vec::new();
        for item in batches(&out.data) {
            let (header, range) = item.unwrap();
            assert_eq!(header.base_offset, next);
            next += header.offset_count();
            let bytes = out.data[range].to_vec();
            let records = decode(&bytes);
            assert_eq!(records.len(), header.records_count as usize);
            assert_eq!(records[0].offset, header.base_offset);
            assert!(records.last().unwrap().offset < next);
            assert_eq!(records[0].timestamp, header.base_timestamp);
            if !header.is_log_append_time() {
                let max = records.iter().map(|r| r.timestamp).max().unwrap();
                assert_eq!(header.max_timestamp, max);
            }
            output.push(bytes);
        }
        assert_eq!(next, out.last_offset + 1);
        output
    }

    fn compact(chunk: &[u8], index: &KeyIndex, options: &CompactOptions) -> CompactedChunk {
        compact_chunk(chunk, index, options).unwrap().unwrap()
    }

    fn seen(offset: i64, key: Option<&str>, value: Option<&str>, ts: i64, delta: i64) -> Seen {
        let r = rec(delta, key, value, ts);
        Seen {
            offset,
            key: r.key,
            value: r.value,
            headers: r.headers,
            timestamp: ts,
        }
    }

    #[test]
    fn keeps_the_latest_value_of_each_key() {
        let a = batch(
            vec![
                rec(0, Some("a"), Some("a1"), 10),
                rec(1, Some("b"), Some("b1"), 11),
                rec(2, Some("a"), Some("a2"), 12),
                rec(3, Some("e"), Some("e1"), 13),
            ],
            Compression::None,
        );
        let b = batch(
            vec![
                rec(0, Some("b"), Some("b2"), 20),
                rec(1, None, Some("x"), 21),
                rec(2, Some("d"), Some("d1"), 22),
            ],
            Compression::None,
        );
        let c = batch(
            vec![
                rec(0, Some("c"), Some("c1"), 30),
                rec(1, Some("a"), Some("a3"), 31),
            ],
            Compression::None,
        );
        let input = chunk(&[&a, &b, &c], 100);
        let index = index_of(&[&input]);
        assert_eq!(index.len(), 5);
        assert_eq!(index.latest_offset(b"a"), Some(108));

        let out = compact(&input, &index, &KEEP_TOMBSTONES);
        let output = check(&out, &input);
        assert_eq!(
            decode(&out.data),
            [
                seen(103, Some("e"), Some("e1"), 13, 3),
                seen(104, Some("b"), Some("b2"), 20, 0),
                seen(105, None, Some("x"), 21, 1),
                seen(106, Some("d"), Some("d1"), 22, 2),
                seen(107, Some("c"), Some("c1"), 30, 0),
                seen(108, Some("a"), Some("a3"), 31, 1),
            ]
        );
        assert_eq!((out.base_offset, out.last_offset), (103, 108));
        assert_eq!((out.records_kept, out.records_dropped), (6, 3));
        assert_eq!(out.max_timestamp, 31);
        assert_eq!(output.len(), 3);
        let mut patched_b = b.clone();
        patch_base_offsets(&mut patched_b, 104).unwrap();
        assert_eq!(output[1], patched_b, "a fully kept batch is copied");
        let mut patched_c = c.clone();
        patch_base_offsets(&mut patched_c, 107).unwrap();
        assert_eq!(output[2], patched_c);
    }

    #[test]
    fn every_compression_round_trips() {
        for codec in CODECS {
            let first = batch(
                (0..6)
                    .map(|i| rec(i, Some(["k0", "k1", "k2"][i as usize % 3]), Some("v"), i))
                    .collect(),
                codec,
            );
            let second = batch(
                vec![
                    rec(0, Some("k1"), Some("new"), 50),
                    rec(1, None, Some("keyless"), 51),
                    rec(2, Some("k4"), Some("v"), 52),
                    rec(3, Some("k4"), Some("v2"), 53),
                ],
                codec,
            );
            let input = chunk(&[&first, &second], 0);
            let index = index_of(&[&input]);
            let out = compact(&input, &index, &KEEP_TOMBSTONES);
            let output = check(&out, &input);
            assert_eq!(decode(&out.data), model(&[&input], &input, i64::MIN));
            assert_eq!(decode(&out.data).len(), 5, "{codec:?}");
            assert_eq!((out.records_kept, out.records_dropped), (5, 5));
            assert_eq!(output.len(), 2);
            for bytes in output {
                let header = BatchHeader::parse(&bytes).unwrap();
                assert_eq!(header.attributes & COMPRESSION_MASK, codec as i16);
            }
        }
    }

    #[test]
    fn tombstones_expire_after_the_cutoff() {
        let input = chunk(
            &[&batch(
                vec![
                    rec(0, Some("a"), Some("a1"), 500),
                    rec(1, Some("a"), None, 600),
                    rec(2, Some("b"), None, 2_000),
                    rec(3, Some("c"), None, 100),
                    rec(4, Some("c"), Some("c2"), 200),
                    rec(5, Some("d"), None, 999),
                    rec(6, Some("e"), None, 1_000),
                ],
                Compression::Lz4,
            )],
            40,
        );
        let index = index_of(&[&input]);
        let options = CompactOptions {
            tombstone_cutoff_ms: 1_000,
        };
        let out = compact(&input, &index, &options);
        check(&out, &input);
        assert_eq!(
            decode(&out.data),
            [
                seen(42, Some("b"), None, 2_000, 2),
                seen(44, Some("c"), Some("c2"), 200, 4),
                seen(46, Some("e"), None, 1_000, 6),
            ]
        );
        assert_eq!(decode(&out.data), model(&[&input], &input, 1_000));
        assert_eq!((out.base_offset, out.last_offset), (42, 46));

        let kept = compact(&input, &index, &KEEP_TOMBSTONES);
        assert_eq!(decode(&kept.data), model(&[&input], &input, i64::MIN));
        assert_eq!(kept.records_kept, 5);
    }

    #[test]
    fn drops_whole_batches_at_the_start_middle_and_end() {
        let two = |key: &str| {
            batch(
                vec![
                    rec(0, Some(key), Some("old"), 1),
                    rec(1, None, Some("keyless"), 2),
                ],
                Compression::Zstd,
            )
        };
        let keyed = |key: &str| {
            batch(
                vec![
                    rec(0, Some(key), Some("old"), 1),
                    rec(1, Some(key), Some("older"), 2),
                ],
                Compression::Zstd,
            )
        };
        let newer = |key: &str| {
            chunk(
                &[&batch(
                    vec![rec(0, Some(key), Some("new"), 9)],
                    Compression::None,
                )],
                1_000,
            )
        };
        // x, y and z each cover two offsets from 10; the dropped one is all keyed records.
        for (dropped, layout, base, deltas) in [
            (0, [keyed("x"), two("y"), two("z")], 12, vec![1, 1]),
            (1, [two("x"), keyed("y"), two("z")], 10, vec![3, 1]),
            (2, [two("x"), two("y"), keyed("z")], 10, vec![1, 3]),
        ] {
            let input = chunk(&[&layout[0], &layout[1], &layout[2]], 10);
            let later = newer(["x", "y", "z"][dropped]);
            let index = index_of(&[&input, &later]);
            let out = compact(&input, &index, &KEEP_TOMBSTONES);
            let output = check(&out, &input);
            assert_eq!(out.base_offset, base, "dropped batch {dropped}");
            assert_eq!(out.last_offset, 15);
            assert_eq!((out.records_kept, out.records_dropped), (4, 2));
            assert_eq!(
                decode(&out.data),
                model(&[&input, &later], &input, i64::MIN)
            );
            let found: Vec<i32> = output
                .iter()
                .map(|b| BatchHeader::parse(b).unwrap().last_offset_delta)
                .collect();
            assert_eq!(found, deltas);
            // Kept batches are the input's bytes, except for an extended lastOffsetDelta.
            let kept_inputs: Vec<&[u8]> = batches(&input)
                .map(|b| &input[b.unwrap().1])
                .enumerate()
                .filter(|&(i, _)| i != dropped)
                .map(|(_, b)| b)
                .collect();
            for (got, want) in output.iter().zip(kept_inputs) {
                assert_eq!(got.len(), want.len());
                assert_eq!(got[..CRC_AT], want[..CRC_AT]);
                assert_eq!(
                    got[LAST_OFFSET_DELTA_AT + 4..],
                    want[LAST_OFFSET_DELTA_AT + 4..]
                );
            }
        }

        let input = chunk(&[&keyed("x")], 10);
        let index = index_of(&[&input, &newer("x")]);
        assert_eq!(
            compact_chunk(&input, &index, &KEEP_TOMBSTONES).unwrap(),
            None
        );
    }

    #[test]
    fn nothing_to_drop_leaves_the_chunk_unchanged_and_compaction_is_idempotent() {
        for codec in CODECS {
            let input = chunk(
                &[
                    &batch(
                        vec![rec(0, Some("a"), Some("1"), 5), rec(1, None, None, 6)],
                        codec,
                    ),
                    &batch(vec![rec(0, Some("b"), Some("1"), 7)], codec),
                ],
                3,
            );
            let index = index_of(&[&input]);
            let out = compact(&input, &index, &KEEP_TOMBSTONES);
            assert_eq!(out.data, input);
            assert_eq!((out.base_offset, out.records_dropped), (3, 0));

            let overwrites = chunk(&[&batch(vec![rec(0, Some("a"), Some("2"), 9)], codec)], 10);
            let index = index_of(&[&input, &overwrites]);
            let once = compact(&input, &index, &KEEP_TOMBSTONES);
            check(&once, &input);
            let twice = compact(&once.data, &index, &KEEP_TOMBSTONES);
            assert_eq!(twice.data, once.data);
            assert_eq!(twice.base_offset, once.base_offset);
        }
    }

    #[test]
    fn compacts_batches_that_already_have_gaps() {
        // A batch compacted before: offsets 0, 2 and 5 of a six-offset span.
        let gappy = batch(
            vec![
                rec(0, Some("a"), Some("1"), 100),
                rec(2, Some("b"), Some("1"), 90),
                rec(5, Some("c"), Some("1"), 120),
            ],
            Compression::Gzip,
        );
        let header = BatchHeader::parse(&gappy).unwrap();
        assert_eq!((header.last_offset_delta, header.records_count), (5, 3));
        let tail = batch(vec![rec(0, Some("a"), Some("2"), 130)], Compression::Gzip);
        let input = chunk(&[&gappy, &tail], 20);
        let index = index_of(&[&input]);
        let out = compact(&input, &index, &KEEP_TOMBSTONES);
        let output = check(&out, &input);
        assert_eq!(
            decode(&out.data),
            [
                seen(22, Some("b"), Some("1"), 90, 2),
                seen(25, Some("c"), Some("1"), 120, 5),
                seen(26, Some("a"), Some("2"), 130, 0),
            ]
        );
        let header = BatchHeader::parse(&output[0]).unwrap();
        assert_eq!((header.base_offset, header.last_offset_delta), (22, 3));
        assert_eq!((header.base_timestamp, header.max_timestamp), (90, 120));
    }

    #[test]
    fn keys_of_later_chunks_win_in_any_order() {
        let first = chunk(
            &[&batch(
                vec![rec(0, Some("a"), Some("1"), 1)],
                Compression::None,
            )],
            0,
        );
        let second = chunk(
            &[&batch(
                vec![rec(0, Some("a"), Some("2"), 2)],
                Compression::None,
            )],
            1,
        );
        let mut index = KeyIndex::new();
        assert!(index.is_empty());
        index.add_chunk(&second).unwrap();
        index.add_chunk(&first).unwrap();
        index.add_chunk(&[]).unwrap();
        assert_eq!((index.len(), index.latest_offset(b"a")), (1, Some(1)));
        assert_eq!(
            compact_chunk(&first, &index, &KEEP_TOMBSTONES).unwrap(),
            None
        );
        assert_eq!(compact(&second, &index, &KEEP_TOMBSTONES).data, second);
        assert_eq!(compact_chunk(&[], &index, &KEEP_TOMBSTONES).unwrap(), None);
        // A key the index has not seen is newer than the indexed range: it is kept.
        assert_eq!(
            compact(&first, &KeyIndex::new(), &KEEP_TOMBSTONES).data,
            first
        );
    }

    fn control_batch() -> Vec<u8> {
        let mut marker = rec(0, Some("\0\0\0\x01"), Some("\0\0\0\0\0\0"), 40);
        marker.headers.clear();
        marker.control = true;
        marker.transactional = true;
        marker.producer_id = 42;
        marker.producer_epoch = 3;
        batch(vec![marker], Compression::None)
    }

    fn producer_batch(records: Vec<Record>, codec: Compression) -> Vec<u8> {
        let records = records
            .into_iter()
            .map(|mut r| {
                r.transactional = true;
                r.producer_id = 42;
                r.producer_epoch = 3;
                r.partition_leader_epoch = 9;
                r
            })
            .collect();
        encode(records, 10, codec)
    }

    #[test]
    fn control_batches_and_producer_fields_are_kept() {
        for codec in CODECS {
            let data = producer_batch(
                vec![
                    rec(0, Some("a"), Some("1"), 30),
                    rec(1, Some("b"), Some("1"), 31),
                    rec(2, Some("a"), Some("2"), 32),
                ],
                codec,
            );
            let control = control_batch();
            let doomed = batch(vec![rec(0, Some("b"), Some("old"), 50)], codec);
            let input = chunk(&[&data, &control, &doomed], 7);
            let later = chunk(
                &[&batch(vec![rec(0, Some("b"), Some("2"), 60)], codec)],
                100,
            );
            let index = index_of(&[&input, &later]);
            assert_eq!(index.len(), 2, "control keys are not indexed");

            let out = compact(&input, &index, &KEEP_TOMBSTONES);
            let output = check(&out, &input);
            assert_eq!(output.len(), 2);
            assert_eq!((out.base_offset, out.last_offset), (9, 11));
            assert_eq!((out.records_kept, out.records_dropped), (2, 3));

            let rewritten =
                RecordBatchDecoder::decode(&mut Bytes::from(output[0].clone())).unwrap();
            assert_eq!(rewritten.compression, codec);
            let record = &rewritten.records[0];
            assert_eq!((record.offset, record.key.as_deref()), (9, Some(&b"a"[..])));
            assert!(record.transactional && !record.control);
            assert_eq!((record.producer_id, record.producer_epoch), (42, 3));
            assert_eq!(record.partition_leader_epoch, 9);
            assert_eq!(record.sequence, 12, "records keep their sequence numbers");

            // The marker is the input's, its span extended over the dropped batch.
            let header = BatchHeader::parse(&output[1]).unwrap();
            assert!(header.is_control() && header.is_transactional());
            assert_eq!((header.base_offset, header.last_offset_delta), (10, 1));
            assert_eq!(
                output[1][LAST_OFFSET_DELTA_AT + 4..],
                control[LAST_OFFSET_DELTA_AT + 4..]
            );
            let marker = RecordBatchDecoder::decode(&mut Bytes::from(output[1].clone())).unwrap();
            assert!(marker.records[0].control);
            assert_eq!(marker.records[0].key.as_deref(), Some(&b"\0\0\0\x01"[..]));
        }
    }

    #[test]
    fn sequences_wrap_like_kafka() {
        assert_eq!(increment_sequence(5, 2), 7);
        assert_eq!(increment_sequence(i32::MAX - 1, 1), i32::MAX);
        assert_eq!(increment_sequence(i32::MAX - 1, 3), 1);
        assert_eq!(increment_sequence(i32::MAX, 1), 0);
    }

    #[test]
    fn log_append_time_is_kept() {
        for codec in [Compression::None, Compression::Snappy] {
            let mut data = batch(
                vec![
                    rec(0, Some("a"), Some("1"), 10),
                    rec(1, Some("a"), Some("2"), 11),
                    rec(2, Some("t"), None, 12),
                ],
                codec,
            );
            set_log_append_time(&mut data, 99_000);
            let input = chunk(&[&data], 0);
            let index = index_of(&[&input]);
            // The tombstone's time is the append time, after the cutoff.
            let options = CompactOptions {
                tombstone_cutoff_ms: 50_000,
            };
            let out = compact(&input, &index, &options);
            let output = check(&out, &input);
            let header = BatchHeader::parse(&output[0]).unwrap();
            assert!(header.is_log_append_time());
            assert_eq!((header.max_timestamp, out.max_timestamp), (99_000, 99_000));
            assert_eq!((header.base_offset, header.records_count), (1, 2));
            let set = RecordBatchDecoder::decode(&mut Bytes::from(output[0].clone())).unwrap();
            assert!(
                set.records
                    .iter()
                    .all(|r| r.timestamp_type == TimestampType::LogAppend)
            );
            let keys: Vec<_> = set.records.iter().map(|r| r.key.clone().unwrap()).collect();
            assert_eq!(keys, ["a", "t"]);

            let expired = CompactOptions {
                tombstone_cutoff_ms: 100_000,
            };
            let out = compact(&input, &index, &expired);
            assert_eq!(decode(&out.data).len(), 1);
        }
    }

    /// Builds an uncompressed batch from raw record tails (key, value, headers).
    fn raw_batch(base_offset: i64, records: &[(i32, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for &(offset_delta, tail) in records {
            let record = parse_record_tail(tail);
            write_record(&mut body, &record, offset_delta, i64::from(offset_delta)).unwrap();
        }
        let mut out = control_batch()[..HEADER_SIZE].to_vec();
        out.extend_from_slice(&body);
        let length = (out.len() - LOG_OVERHEAD) as i32;
        let last = records.last().unwrap().0;
        put(&mut out, 0, &base_offset.to_be_bytes());
        put(&mut out, BATCH_LENGTH_AT, &length.to_be_bytes());
        put(&mut out, ATTRIBUTES_AT, &0i16.to_be_bytes());
        put(&mut out, LAST_OFFSET_DELTA_AT, &last.to_be_bytes());
        put(&mut out, BASE_TIMESTAMP_AT, &0i64.to_be_bytes());
        put(&mut out, MAX_TIMESTAMP_AT, &i64::from(last).to_be_bytes());
        put(
            &mut out,
            RECORDS_COUNT_AT,
            &(records.len() as i32).to_be_bytes(),
        );
        set_crc(&mut out);
        out
    }

    fn parse_record_tail(tail: &[u8]) -> RawRecord<'_> {
        RawRecord {
            attributes: 0,
            timestamp_delta: 0,
            offset_delta: 0,
            key: None,
            is_tombstone: false,
            tail,
        }
    }

    /// Record tail bytes: key, value and headers, each header key given raw.
    fn tail(key: Option<&[u8]>, value: &[u8], headers: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        let put_bytes = |out: &mut Vec<u8>, bytes: &[u8]| {
            put_varlong(out, bytes.len() as i64);
            out.extend_from_slice(bytes);
        };
        match key {
            Some(key) => put_bytes(&mut out, key),
            None => put_varlong(&mut out, -1),
        }
        put_bytes(&mut out, value);
        put_varlong(&mut out, headers.len() as i64);
        for (key, value) in headers {
            put_bytes(&mut out, key);
            put_bytes(&mut out, value);
        }
        out
    }

    #[test]
    fn duplicate_and_binary_header_keys_survive() {
        let headers: &[(&[u8], &[u8])] = &[
            (b"\xff", b"1"),
            (b"\xff", b"2"),
            (b"dup", b"3"),
            (b"dup", b"4"),
        ];
        let old = tail(Some(b"k"), b"old", &[]);
        let keyless = tail(None, b"x", headers);
        let new = tail(Some(b"k"), b"new", headers);
        let input = raw_batch(70, &[(0, &old), (1, &keyless), (2, &new)]);
        validate(&input, usize::MAX).unwrap();
        let index = index_of(&[&input]);
        let out = compact(&input, &index, &KEEP_TOMBSTONES);
        validate(&out.data, usize::MAX).unwrap();
        assert_eq!(
            (out.base_offset, out.last_offset, out.records_kept),
            (71, 72, 2)
        );
        let header = BatchHeader::parse(&out.data).unwrap();
        let section = records_section(&out.data, &header).unwrap();
        let records = parse_records(&section, &header).unwrap();
        let tails: Vec<&[u8]> = records.iter().map(|r| r.tail).collect();
        assert_eq!(tails, [&keyless[..], &new[..]]);
        let deltas: Vec<(i32, i64)> = records
            .iter()
            .map(|r| (r.offset_delta, r.timestamp_delta))
            .collect();
        assert_eq!(deltas, [(0, 0), (1, 1)]);
        assert_eq!((header.base_timestamp, header.max_timestamp), (1, 2));
    }

    #[test]
    fn corrupt_input_is_an_error() {
        let good = chunk(
            &[
                &batch(
                    vec![
                        rec(0, Some("a"), Some("1"), 1),
                        rec(1, Some("a"), Some("2"), 2),
                    ],
                    Compression::None,
                ),
                &batch(vec![rec(0, Some("b"), Some("1"), 3)], Compression::Lz4),
            ],
            5,
        );
        let index = index_of(&[&good]);
        let fails = |bad: &[u8]| {
            let compacted = compact_chunk(bad, &index, &KEEP_TOMBSTONES).unwrap_err();
            let indexed = KeyIndex::new().add_chunk(bad).unwrap_err();
            assert_eq!(compacted.to_string(), indexed.to_string());
            compacted
        };

        let mut bad = good.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(matches!(
            fails(&bad),
            CompactError::Batch(BatchError::CrcMismatch)
        ));
        assert!(matches!(
            fails(&good[..good.len() - 1]),
            CompactError::Batch(BatchError::Truncated)
        ));
        let mut bad = good.clone();
        bad[16] = 1;
        assert!(matches!(
            fails(&bad),
            CompactError::Batch(BatchError::UnsupportedMagic(1))
        ));

        let mut unpatched = good.clone();
        let second = batches(&good).nth(1).unwrap().unwrap().1.start;
        unpatched[second..second + 8].copy_from_slice(&0i64.to_be_bytes());
        assert!(matches!(
            fails(&unpatched),
            CompactError::NotContiguous {
                expected: 7,
                found: 0
            }
        ));

        // Valid CRCs over bad contents.
        let first_len = second;
        let mut short_count = good.clone();
        put(
            &mut short_count[..first_len],
            RECORDS_COUNT_AT,
            &1i32.to_be_bytes(),
        );
        set_crc(&mut short_count[..first_len]);
        assert!(matches!(
            fails(&short_count),
            CompactError::Records { base_offset: 5, .. }
        ));
        let mut codec7 = good.clone();
        put(&mut codec7[..first_len], ATTRIBUTES_AT, &7i16.to_be_bytes());
        set_crc(&mut codec7[..first_len]);
        assert!(
            fails(&codec7)
                .to_string()
                .contains("unknown compression codec 7")
        );
        let mut lz4 = good.clone();
        lz4[second + HEADER_SIZE + 4] ^= 0xff;
        set_crc(&mut lz4[second..]);
        assert!(matches!(
            fails(&lz4),
            CompactError::Records { base_offset: 7, .. }
        ));
        let reversed = batch(
            vec![
                rec(1, Some("a"), Some("1"), 1),
                rec(0, Some("b"), Some("1"), 1),
            ],
            Compression::None,
        );
        assert!(fails(&reversed).to_string().contains("out of order"));
    }

    #[test]
    fn garbage_never_panics() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let index = KeyIndex::new();
        for codec in CODECS {
            let good = batch(
                (0..8)
                    .map(|i| rec(i, Some(["a", "b"][i as usize % 2]), Some("value"), i))
                    .collect(),
                codec,
            );
            for _ in 0..300 {
                let mut bad = good.clone();
                for _ in 0..=next() % 3 {
                    let at = ATTRIBUTES_AT + (next() as usize % (bad.len() - ATTRIBUTES_AT));
                    bad[at] = next() as u8;
                }
                set_crc(&mut bad);
                let _ = KeyIndex::new().add_chunk(&bad);
                if let Ok(Some(out)) = compact_chunk(&bad, &index, &KEEP_TOMBSTONES) {
                    validate(&out.data, usize::MAX).unwrap();
                }
            }
        }
        for len in 0..300 {
            let mut buf: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if len > 16 {
                buf[16] = 2;
            }
            let _ = KeyIndex::new().add_chunk(&buf);
            let _ = compact_chunk(&buf, &index, &KEEP_TOMBSTONES);
        }
    }
}
