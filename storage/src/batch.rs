//! Kafka record batch v2 (magic 2) handling on the client's raw bytes.
//!
//! Records are never decoded or re-encoded: the broker only needs the batch header to
//! validate, index and re-offset a batch, and keeping the producer's bytes saves CPU and
//! keeps compressed batches compressed end to end.

use std::ops::Range;

use thiserror::Error;

/// Size of the v2 batch header, from baseOffset through recordsCount.
pub const HEADER_SIZE: usize = 61;

/// Bytes before the batchLength field's coverage starts (baseOffset + batchLength).
const LOG_OVERHEAD: usize = 12;
/// Smallest legal batchLength: the rest of the header after the batchLength field.
const MIN_BATCH_LENGTH: i32 = (HEADER_SIZE - LOG_OVERHEAD) as i32;
const MAGIC_OFFSET: usize = 16;
const CRC_OFFSET: usize = 17;
/// The CRC covers everything from the attributes field to the end of the batch.
const ATTRIBUTES_OFFSET: usize = 21;
const MAX_TIMESTAMP_OFFSET: usize = 35;

const TIMESTAMP_TYPE_BIT: i16 = 1 << 3;
const TRANSACTIONAL_BIT: i16 = 1 << 4;
const CONTROL_BIT: i16 = 1 << 5;

/// Why a batch was refused; each maps to the Kafka error code a producer understands.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BatchError {
    #[error("record batch is truncated")]
    Truncated,
    #[error("record batch length field is invalid")]
    InvalidLength,
    #[error("record batch CRC-32C does not match its contents")]
    CrcMismatch,
    #[error("unsupported record batch magic {0} (only v2 is supported)")]
    UnsupportedMagic(i8),
    #[error("record batch of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge { size: usize, max: usize },
    #[error("record batch has an invalid record count or offset delta")]
    InvalidRecordCount,
    #[error("no record batch in the request")]
    Empty,
}

impl BatchError {
    /// The Kafka error code Kafka itself returns for this kind of bad batch.
    pub fn kafka_error_code(&self) -> i16 {
        match self {
            BatchError::Truncated | BatchError::InvalidLength | BatchError::CrcMismatch => 2,
            BatchError::UnsupportedMagic(_) => 43,
            BatchError::TooLarge { .. } => 10,
            BatchError::InvalidRecordCount | BatchError::Empty => 87,
        }
    }
}

/// The fixed 61-byte header of a v2 record batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub records_count: i32,
}

impl BatchHeader {
    /// Parses the header at the start of `buf`.
    ///
    /// Fails with `Truncated` when fewer than [`HEADER_SIZE`] bytes are given and with
    /// `InvalidLength` when batchLength is shorter than the header itself, so that
    /// [`total_size`](Self::total_size) is always at least [`HEADER_SIZE`]. The magic byte
    /// and CRC are not checked here; [`validate`] does that.
    pub fn parse(buf: &[u8]) -> Result<BatchHeader, BatchError> {
        let h = buf.get(..HEADER_SIZE).ok_or(BatchError::Truncated)?;
        let header = BatchHeader {
            base_offset: i64::from_be_bytes(array(h, 0)),
            batch_length: i32::from_be_bytes(array(h, 8)),
            partition_leader_epoch: i32::from_be_bytes(array(h, 12)),
            magic: i8::from_be_bytes(array(h, MAGIC_OFFSET)),
            crc: u32::from_be_bytes(array(h, CRC_OFFSET)),
            attributes: i16::from_be_bytes(array(h, ATTRIBUTES_OFFSET)),
            last_offset_delta: i32::from_be_bytes(array(h, 23)),
            base_timestamp: i64::from_be_bytes(array(h, 27)),
            max_timestamp: i64::from_be_bytes(array(h, MAX_TIMESTAMP_OFFSET)),
            producer_id: i64::from_be_bytes(array(h, 43)),
            producer_epoch: i16::from_be_bytes(array(h, 51)),
            base_sequence: i32::from_be_bytes(array(h, 53)),
            records_count: i32::from_be_bytes(array(h, 57)),
        };
        if header.batch_length < MIN_BATCH_LENGTH {
            return Err(BatchError::InvalidLength);
        }
        Ok(header)
    }

    /// Size of the whole batch including the baseOffset and batchLength fields.
    pub fn total_size(&self) -> usize {
        // `parse` guarantees batch_length >= MIN_BATCH_LENGTH > 0.
        self.batch_length as usize + LOG_OVERHEAD
    }

    /// Number of offsets the batch occupies (compaction may leave gaps, so this can exceed
    /// the record count).
    pub fn offset_count(&self) -> i64 {
        i64::from(self.last_offset_delta) + 1
    }

    pub fn is_log_append_time(&self) -> bool {
        self.attributes & TIMESTAMP_TYPE_BIT != 0
    }

    pub fn is_control(&self) -> bool {
        self.attributes & CONTROL_BIT != 0
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & TRANSACTIONAL_BIT != 0
    }
}

/// Copies `N` bytes at `at`; callers have already bounds-checked the header slice.
fn array<const N: usize>(h: &[u8], at: usize) -> [u8; N] {
    let mut out = [0; N];
    out.copy_from_slice(&h[at..at + N]);
    out
}

/// Iterates over concatenated batches, yielding each header and its byte range in `buf`.
///
/// Yields one error and then stops when a batch is malformed or cut short.
pub fn batches(buf: &[u8]) -> BatchIter<'_> {
    BatchIter {
        buf,
        pos: 0,
        failed: false,
    }
}

/// Iterator returned by [`batches`].
#[derive(Debug, Clone)]
pub struct BatchIter<'a> {
    buf: &'a [u8],
    pos: usize,
    failed: bool,
}

impl Iterator for BatchIter<'_> {
    type Item = Result<(BatchHeader, Range<usize>), BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.buf.len() {
            return None;
        }
        let result = next_batch(self.buf, self.pos);
        match &result {
            Ok((_, range)) => self.pos = range.end,
            Err(_) => self.failed = true,
        }
        Some(result)
    }
}

/// Parses the batch starting at `pos` and checks that all of it is present.
fn next_batch(buf: &[u8], pos: usize) -> Result<(BatchHeader, Range<usize>), BatchError> {
    let rest = &buf[pos..];
    let header = BatchHeader::parse(rest)?;
    let size = header.total_size();
    if size > rest.len() {
        return Err(BatchError::Truncated);
    }
    Ok((header, pos..pos + size))
}

/// Summary of a validated produce buffer, used to size and index its chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validated {
    /// Offsets the batches occupy in total (sum of lastOffsetDelta + 1).
    pub offset_count: i64,
    /// Largest maxTimestamp of all batches.
    pub max_timestamp: i64,
    /// Records in all batches.
    pub records: i64,
    pub batches: usize,
}

/// Checks every batch of a produce buffer before any of it is accepted.
///
/// Each batch must be complete, magic v2, correctly sized, CRC-valid, have a consistent
/// record count, and be at most `max_message_bytes` (Kafka's `max.message.bytes` applies
/// per batch). Never panics, whatever the input.
pub fn validate(buf: &[u8], max_message_bytes: usize) -> Result<Validated, BatchError> {
    if buf.is_empty() {
        return Err(BatchError::Empty);
    }
    let mut summary = Validated {
        offset_count: 0,
        max_timestamp: i64::MIN,
        records: 0,
        batches: 0,
    };
    let mut pos = 0;
    while pos < buf.len() {
        let rest = &buf[pos..];
        // Magic sits at the same place in v0/v1 message sets, which can be shorter than a
        // v2 header: report them as unsupported rather than truncated.
        let magic = *rest.get(MAGIC_OFFSET).ok_or(BatchError::Truncated)? as i8;
        if magic != 2 {
            return Err(BatchError::UnsupportedMagic(magic));
        }
        let (header, range) = next_batch(buf, pos)?;
        let size = range.len();
        if size > max_message_bytes {
            return Err(BatchError::TooLarge {
                size,
                max: max_message_bytes,
            });
        }
        let batch = &buf[range.clone()];
        if crc32c::crc32c(&batch[ATTRIBUTES_OFFSET..]) != header.crc {
            return Err(BatchError::CrcMismatch);
        }
        let offset_count = header.offset_count();
        let records = i64::from(header.records_count);
        if records < 1 || header.last_offset_delta < 0 || records > offset_count {
            return Err(BatchError::InvalidRecordCount);
        }
        summary.offset_count = summary
            .offset_count
            .checked_add(offset_count)
            .ok_or(BatchError::InvalidRecordCount)?;
        summary.records = summary
            .records
            .checked_add(records)
            .ok_or(BatchError::InvalidRecordCount)?;
        summary.max_timestamp = summary.max_timestamp.max(header.max_timestamp);
        summary.batches += 1;
        pos = range.end;
    }
    Ok(summary)
}

/// Marks one batch as LogAppendTime stamped with `now_ms`, as Kafka does for topics with
/// `message.timestamp.type=LogAppendTime`.
///
/// Sets the timestamp-type attribute, writes maxTimestamp (baseTimestamp is left alone, as
/// in Kafka; consumers read maxTimestamp for every record) and recomputes the CRC. `batch`
/// must hold exactly one validated batch; a slice that does not start with a complete
/// batch is left untouched.
pub fn set_log_append_time(batch: &mut [u8], now_ms: i64) {
    let Ok(header) = BatchHeader::parse(batch) else {
        return;
    };
    let Some(batch) = batch.get_mut(..header.total_size()) else {
        return;
    };
    let attributes = header.attributes | TIMESTAMP_TYPE_BIT;
    batch[ATTRIBUTES_OFFSET..ATTRIBUTES_OFFSET + 2].copy_from_slice(&attributes.to_be_bytes());
    batch[MAX_TIMESTAMP_OFFSET..MAX_TIMESTAMP_OFFSET + 8].copy_from_slice(&now_ms.to_be_bytes());
    let crc = crc32c::crc32c(&batch[ATTRIBUTES_OFFSET..]);
    batch[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
}

/// Writes the real base offsets into concatenated batches, starting at `base_offset`.
///
/// Offsets exist only after the commit, so the fetch path calls this on stored bytes. The
/// baseOffset field lies outside the CRC, so no checksum changes. The buffer is checked
/// completely before the first write, so on error it is left unchanged.
pub fn patch_base_offsets(buf: &mut [u8], base_offset: i64) -> Result<(), BatchError> {
    let mut next = base_offset;
    let mut offsets = Vec::new();
    for batch in batches(buf) {
        let (header, range) = batch?;
        offsets.push((range.start, next));
        next = next
            .checked_add(header.offset_count())
            .ok_or(BatchError::InvalidRecordCount)?;
    }
    for (start, offset) in offsets {
        buf[start..start + 8].copy_from_slice(&offset.to_be_bytes());
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use bytes::{Bytes, BytesMut};
    use kafka_protocol::records::{
        Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions,
        TimestampType,
    };

    /// Encodes one batch of `count` records with timestamps `ts, ts+1, ...`.
    pub(crate) fn encode_batch(count: i64, ts: i64, compression: Compression) -> Vec<u8> {
        let records: Vec<Record> = (0..count)
            .map(|i| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: i,
                sequence: i as i32,
                timestamp: ts + i,
                key: Some(Bytes::from(format!("key-{i}"))),
                value: Some(Bytes::from(vec![b'v'; 100])),
                headers: Default::default(),
            })
            .collect();
        let mut buf = BytesMut::new();
        let options = RecordEncodeOptions {
            version: 2,
            compression,
        };
        RecordBatchEncoder::encode(&mut buf, &records, &options).unwrap();
        buf.to_vec()
    }

    #[test]
    fn validates_good_batches() {
        for compression in [Compression::None, Compression::Lz4, Compression::Zstd] {
            let batch = encode_batch(5, 1_000, compression);
            let v = validate(&batch, 1 << 20).unwrap();
            assert_eq!(
                v,
                Validated {
                    offset_count: 5,
                    max_timestamp: 1_004,
                    records: 5,
                    batches: 1
                }
            );
            let header = BatchHeader::parse(&batch).unwrap();
            assert_eq!(header.total_size(), batch.len());
            assert_eq!(header.attributes & 0x7, compression as i16);
            assert!(!header.is_log_append_time());
            assert!(!header.is_control());
            assert!(!header.is_transactional());
        }
    }

    #[test]
    fn validates_concatenated_batches() {
        let mut buf = encode_batch(2, 10, Compression::None);
        buf.extend(encode_batch(3, 50, Compression::Lz4));
        let v = validate(&buf, 1 << 20).unwrap();
        assert_eq!(v.offset_count, 5);
        assert_eq!(v.records, 5);
        assert_eq!(v.batches, 2);
        assert_eq!(v.max_timestamp, 52);
    }

    #[test]
    fn rejects_flipped_crc_and_content() {
        let batch = encode_batch(3, 0, Compression::None);
        for at in [CRC_OFFSET, ATTRIBUTES_OFFSET + 3, batch.len() - 1] {
            let mut bad = batch.clone();
            bad[at] ^= 0x40;
            let err = validate(&bad, 1 << 20).unwrap_err();
            assert_eq!(err, BatchError::CrcMismatch);
            assert_eq!(err.kafka_error_code(), 2);
        }
    }

    #[test]
    fn rejects_wrong_magic() {
        let mut batch = encode_batch(1, 0, Compression::None);
        batch[MAGIC_OFFSET] = 1;
        let err = validate(&batch, 1 << 20).unwrap_err();
        assert_eq!(err, BatchError::UnsupportedMagic(1));
        assert_eq!(err.kafka_error_code(), 43);
    }

    #[test]
    fn rejects_every_truncation() {
        let mut buf = encode_batch(2, 0, Compression::None);
        buf.extend(encode_batch(2, 0, Compression::Zstd));
        for len in 1..buf.len() {
            let err = validate(&buf[..len], 1 << 20);
            if len == buf.len() - encode_batch(2, 0, Compression::Zstd).len() {
                assert!(err.is_ok(), "exactly the first batch is valid");
            } else {
                assert!(err.is_err(), "length {len} accepted");
            }
            let last = batches(&buf[..len]).last().unwrap();
            if err.is_err() {
                assert!(last.is_err());
            }
        }
        assert_eq!(validate(&[], 100), Err(BatchError::Empty));
        assert_eq!(BatchError::Empty.kafka_error_code(), 87);
    }

    #[test]
    fn rejects_bad_lengths_and_counts() {
        let batch = encode_batch(3, 0, Compression::None);

        let mut bad = batch.clone();
        bad[8..12].copy_from_slice(&10i32.to_be_bytes());
        assert_eq!(validate(&bad, 1 << 20), Err(BatchError::InvalidLength));
        bad[8..12].copy_from_slice(&i32::MAX.to_be_bytes());
        assert_eq!(validate(&bad, 1 << 20), Err(BatchError::Truncated));
        bad[8..12].copy_from_slice(&(-1i32).to_be_bytes());
        assert_eq!(validate(&bad, 1 << 20), Err(BatchError::InvalidLength));

        // records_count > last_offset_delta + 1, with a CRC that matches.
        let mut bad = batch.clone();
        bad[57..61].copy_from_slice(&4i32.to_be_bytes());
        set_crc(&mut bad);
        assert_eq!(validate(&bad, 1 << 20), Err(BatchError::InvalidRecordCount));
        let mut bad = batch.clone();
        bad[23..27].copy_from_slice(&(-1i32).to_be_bytes());
        set_crc(&mut bad);
        assert_eq!(validate(&bad, 1 << 20), Err(BatchError::InvalidRecordCount));
        let mut bad = batch;
        bad[57..61].copy_from_slice(&0i32.to_be_bytes());
        set_crc(&mut bad);
        let err = validate(&bad, 1 << 20).unwrap_err();
        assert_eq!(err, BatchError::InvalidRecordCount);
        assert_eq!(err.kafka_error_code(), 87);
    }

    fn set_crc(batch: &mut [u8]) {
        let crc = crc32c::crc32c(&batch[ATTRIBUTES_OFFSET..]);
        batch[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
    }

    #[test]
    fn rejects_oversize() {
        let batch = encode_batch(3, 0, Compression::None);
        assert!(validate(&batch, batch.len()).is_ok());
        let err = validate(&batch, batch.len() - 1).unwrap_err();
        assert_eq!(
            err,
            BatchError::TooLarge {
                size: batch.len(),
                max: batch.len() - 1
            }
        );
        assert_eq!(err.kafka_error_code(), 10);
    }

    #[test]
    fn garbage_never_panics() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..300 {
            let mut buf: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            if len > MAGIC_OFFSET {
                buf[MAGIC_OFFSET] = 2;
            }
            let _ = validate(&buf, 1 << 20);
            let _ = batches(&buf).count();
            let _ = patch_base_offsets(&mut buf, 7);
            set_log_append_time(&mut buf, 7);
        }
    }

    #[test]
    fn log_append_time_keeps_crc_valid() {
        for compression in [Compression::None, Compression::Lz4] {
            let mut batch = encode_batch(3, 1_000, compression);
            set_log_append_time(&mut batch, 99_000);
            validate(&batch, 1 << 20).unwrap();
            let header = BatchHeader::parse(&batch).unwrap();
            assert!(header.is_log_append_time());
            assert_eq!(header.max_timestamp, 99_000);
            assert_eq!(header.base_timestamp, 1_000);
            let decoded = RecordBatchDecoder::decode(&mut Bytes::from(batch)).unwrap();
            assert_eq!(decoded.records.len(), 3);
            for record in decoded.records {
                assert_eq!(record.timestamp_type, TimestampType::LogAppend);
            }
        }
    }

    #[test]
    fn patches_base_offsets() {
        let mut buf = encode_batch(2, 0, Compression::None);
        buf.extend(encode_batch(3, 0, Compression::Lz4));
        buf.extend(encode_batch(1, 0, Compression::None));
        patch_base_offsets(&mut buf, 100).unwrap();
        validate(&buf, 1 << 20).unwrap();
        let bases: Vec<i64> = batches(&buf).map(|b| b.unwrap().0.base_offset).collect();
        assert_eq!(bases, [100, 102, 105]);
        let decoded = RecordBatchDecoder::decode_all(&mut Bytes::from(buf)).unwrap();
        let offsets: Vec<i64> = decoded
            .iter()
            .flat_map(|set| set.records.iter().map(|r| r.offset))
            .collect();
        assert_eq!(offsets, (100..106).collect::<Vec<_>>());
    }

    #[test]
    fn patch_leaves_truncated_buffer_unchanged() {
        let mut buf = encode_batch(2, 0, Compression::None);
        buf.extend(encode_batch(2, 0, Compression::None));
        buf.pop();
        let before = buf.clone();
        assert_eq!(
            patch_base_offsets(&mut buf, 100),
            Err(BatchError::Truncated)
        );
        assert_eq!(buf, before);
    }
}
