//! Parquet export of stored record batches, for warehouse and backfill tools (DuckDB, Spark,
//! Trino) that cannot read Kafka's batch format.
//!
//! One row per record: partition, offset, timestamp, key, value and the headers as a list of
//! (key, value) structs in the standard three-level LIST layout. Columns are compressed with
//! Zstd: it compresses typical record payloads (JSON, Avro, text) better than Snappy, every
//! warehouse engine reads it, and its C library is already built for Kafka's own batch
//! compression.
//!
//! Batches are decompressed with the `kafka-protocol` codecs, but their records are parsed
//! here: that crate's decoder keeps only the last of repeated header keys (Kafka allows
//! repeats), rejects a whole batch over one header key that is not UTF-8, and panics in debug
//! builds on offset or timestamp deltas that overflow.

use std::fmt;

use bytes::Bytes;
use parquet::basic::{Compression, ZstdLevel};
use parquet::data_type::{ByteArray, ByteArrayType, DataType, Int32Type, Int64Type};
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::file::writer::{SerializedFileWriter, SerializedRowGroupWriter};
use parquet::record::{Field, Row};
use parquet::schema::parser::parse_message_type;
use parquet::schema::types::{ColumnPath, Type};
use thiserror::Error;

use crate::batch::{self, BatchError, BatchHeader};
use crate::records::{self, Reader};

/// Records per row group: enough for long, well-compressed column pages, few enough that an
/// export of any length keeps at most one row group of uncompressed values in memory.
pub const ROW_GROUP_RECORDS: usize = 65_536;
/// Buffered key, value and header bytes that close a row group early, for large records.
pub const ROW_GROUP_BYTES: usize = 64 << 20;

/// zstd's own default level: most of the ratio of higher levels at a fraction of their cost.
const ZSTD_LEVEL: i32 = 3;
/// Smallest encoded record: length, attributes, timestamp delta, offset delta, key length,
/// value length and header count, one byte each.
const MIN_RECORD_SIZE: usize = 7;

/// The file schema. `timestamp` is UTC epoch milliseconds, as Kafka defines it.
const SCHEMA: &str = "
message record {
  required int32 partition;
  required int64 offset;
  required int64 timestamp (TIMESTAMP(MILLIS,true));
  optional binary key;
  optional binary value;
  optional group headers (LIST) {
    repeated group list {
      required group element {
        required binary key (STRING);
        optional binary value;
      }
    }
  }
}";

/// Definition levels of the header leaves: `headers` present but empty, a header present,
/// and a header value present.
const HEADERS_EMPTY: i16 = 1;
const HEADER_PRESENT: i16 = 2;
const HEADER_VALUE_PRESENT: i16 = 3;

/// Why an export failed.
#[derive(Debug, Error)]
pub enum ExportError {
    #[error("corrupt record batch: {0}")]
    Batch(#[from] BatchError),
    #[error("record batch at offset {base_offset} does not decompress: {message}")]
    Decompress { base_offset: i64, message: String },
    #[error("record batch at offset {base_offset} holds malformed records: {reason}")]
    Records {
        base_offset: i64,
        reason: &'static str,
    },
    /// A record at or below one already exported: the same chunk given twice, or chunks out
    /// of order, which would duplicate or reorder rows in the warehouse.
    #[error("record offset {offset} is below the next expected offset {expected}")]
    OffsetOrder { offset: i64, expected: i64 },
    #[error("parquet: {0}")]
    Parquet(#[from] ParquetError),
    #[error("not a record export: {0}")]
    NotAnExport(String),
}

/// Writes one partition's records as a Parquet file in memory.
///
/// Records are buffered column by column and written as a row group every
/// [`ROW_GROUP_RECORDS`] records or [`ROW_GROUP_BYTES`] buffered bytes, so memory holds the
/// compressed file plus at most one row group of plain values. An error from
/// [`add_chunk`](Self::add_chunk) about the chunk's contents adds nothing and leaves the export
/// usable; a [`ExportError::Parquet`] error leaves it unusable.
pub struct ParquetExport {
    partition: i32,
    writer: SerializedFileWriter<Vec<u8>>,
    rows: Rows,
    row_group_records: usize,
    records: u64,
    next_offset: Option<i64>,
}

impl fmt::Debug for ParquetExport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParquetExport")
            .field("partition", &self.partition)
            .field("records", &self.records)
            .field("next_offset", &self.next_offset)
            .finish_non_exhaustive()
    }
}

impl ParquetExport {
    /// Starts an export of one partition, whose number every row carries so that files are
    /// self-describing wherever they are copied.
    pub fn new(partition: i32) -> Result<Self, ExportError> {
        let properties = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(ZSTD_LEVEL)?))
            // Unique per record: a dictionary would only grow until it is abandoned.
            .set_column_dictionary_enabled(ColumnPath::from("offset"), false)
            .set_column_dictionary_enabled(ColumnPath::from("timestamp"), false)
            .build();
        let writer = SerializedFileWriter::new(Vec::new(), schema()?.into(), properties.into())?;
        Ok(ParquetExport {
            partition,
            writer,
            rows: Rows::default(),
            row_group_records: ROW_GROUP_RECORDS,
            records: 0,
            next_offset: None,
        })
    }

    /// Sets the records per row group (at least 1), for tests and tools that want small
    /// row groups.
    pub fn with_row_group_records(mut self, records: usize) -> Self {
        self.row_group_records = records.max(1);
        self
    }

    /// Adds the records of a chunk whose offsets are in `[from_offset, to_offset)`, so that a
    /// caller can export a range that starts or ends inside a batch. Returns how many records
    /// were added.
    ///
    /// The chunk's batches must carry their real base offsets. Control batches (transaction
    /// markers) are skipped; records of aborted transactions are not recognised and are
    /// exported like any other. For LogAppendTime batches every record gets the batch's
    /// maxTimestamp, as Kafka consumers see it. Offsets must increase across calls. Each
    /// batch is checked (CRC included) before any record of the chunk is added.
    pub fn add_chunk(
        &mut self,
        chunk: &[u8],
        from_offset: i64,
        to_offset: i64,
    ) -> Result<u64, ExportError> {
        let mut records = Vec::new();
        let mut next = self.next_offset;
        for batch in batch::batches(chunk) {
            let (header, range) = batch?;
            let last_offset = header
                .base_offset
                .saturating_add(i64::from(header.last_offset_delta));
            if header.is_control() || last_offset < from_offset || header.base_offset >= to_offset {
                continue;
            }
            for record in decode_batch(&chunk[range], &header, self.partition)? {
                if record.offset < from_offset || record.offset >= to_offset {
                    continue;
                }
                if let Some(expected) = next
                    && record.offset < expected
                {
                    return Err(ExportError::OffsetOrder {
                        offset: record.offset,
                        expected,
                    });
                }
                // Below `to_offset`, so the increment cannot overflow.
                next = Some(record.offset + 1);
                records.push(record);
            }
        }
        let added = records.len() as u64;
        for record in records {
            self.rows.push(record);
            if self.rows.len() >= self.row_group_records || self.rows.bytes >= ROW_GROUP_BYTES {
                self.flush()?;
            }
        }
        self.records += added;
        self.next_offset = next;
        Ok(added)
    }

    /// Records added so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Offset after the last record added (`None` if none), where a follow-up export of the
    /// partition resumes. Trailing control batches do not advance it.
    pub fn next_offset(&self) -> Option<i64> {
        self.next_offset
    }

    /// Writes the last row group and the footer and returns the whole file. An export without
    /// records is a valid file without row groups.
    pub fn finish(mut self) -> Result<Bytes, ExportError> {
        self.flush()?;
        Ok(Bytes::from(self.writer.into_inner()?))
    }

    fn flush(&mut self) -> Result<(), ParquetError> {
        if self.rows.len() == 0 {
            return Ok(());
        }
        let rows = std::mem::take(&mut self.rows);
        let partitions = vec![self.partition; rows.len()];
        let mut group = self.writer.next_row_group()?;
        write_column::<Int32Type>(&mut group, &partitions, None, None)?;
        write_column::<Int64Type>(&mut group, &rows.offsets, None, None)?;
        write_column::<Int64Type>(&mut group, &rows.timestamps, None, None)?;
        write_column::<ByteArrayType>(&mut group, &rows.keys, Some(&rows.key_levels), None)?;
        write_column::<ByteArrayType>(&mut group, &rows.values, Some(&rows.value_levels), None)?;
        write_column::<ByteArrayType>(
            &mut group,
            &rows.header_keys,
            Some(&rows.header_key_levels),
            Some(&rows.header_repetition),
        )?;
        write_column::<ByteArrayType>(
            &mut group,
            &rows.header_values,
            Some(&rows.header_value_levels),
            Some(&rows.header_repetition),
        )?;
        group.close()?;
        Ok(())
    }
}

/// One row group's values, as the column writers take them: non-null values plus
/// definition levels for optional columns and repetition levels for the header list.
#[derive(Default)]
struct Rows {
    offsets: Vec<i64>,
    timestamps: Vec<i64>,
    keys: Vec<ByteArray>,
    key_levels: Vec<i16>,
    values: Vec<ByteArray>,
    value_levels: Vec<i16>,
    header_keys: Vec<ByteArray>,
    header_key_levels: Vec<i16>,
    header_values: Vec<ByteArray>,
    header_value_levels: Vec<i16>,
    /// Shared by both header leaves: 0 starts a record's list, 1 continues it.
    header_repetition: Vec<i16>,
    /// Key, value and header bytes buffered.
    bytes: usize,
}

impl Rows {
    fn len(&self) -> usize {
        self.offsets.len()
    }

    fn push(&mut self, record: ExportedRecord) {
        self.offsets.push(record.offset);
        self.timestamps.push(record.timestamp);
        self.bytes += push_optional(&mut self.keys, &mut self.key_levels, record.key, 1);
        self.bytes += push_optional(&mut self.values, &mut self.value_levels, record.value, 1);
        if record.headers.is_empty() {
            self.header_key_levels.push(HEADERS_EMPTY);
            self.header_value_levels.push(HEADERS_EMPTY);
            self.header_repetition.push(0);
        }
        for (i, (key, value)) in record.headers.into_iter().enumerate() {
            self.header_repetition.push(i16::from(i > 0));
            self.bytes += key.len();
            self.header_keys.push(ByteArray::from(key.into_bytes()));
            self.header_key_levels.push(HEADER_PRESENT);
            self.bytes += push_optional(
                &mut self.header_values,
                &mut self.header_value_levels,
                value,
                HEADER_VALUE_PRESENT,
            );
        }
    }
}

/// Appends an optional value as its definition level (`present` or one less) and, when
/// present, the value. Returns the bytes added.
fn push_optional(
    values: &mut Vec<ByteArray>,
    levels: &mut Vec<i16>,
    value: Option<Bytes>,
    present: i16,
) -> usize {
    match value {
        Some(value) => {
            let len = value.len();
            values.push(ByteArray::from(value));
            levels.push(present);
            len
        }
        None => {
            levels.push(present - 1);
            0
        }
    }
}

/// Writes the next leaf column of a row group; the caller goes through them in schema order.
fn write_column<T: DataType>(
    group: &mut SerializedRowGroupWriter<'_, Vec<u8>>,
    values: &[T::T],
    definition: Option<&[i16]>,
    repetition: Option<&[i16]>,
) -> Result<(), ParquetError> {
    let mut column = group
        .next_column()?
        .ok_or_else(|| ParquetError::General("export schema has fewer columns".into()))?;
    column
        .typed::<T>()
        .write_batch(values, definition, repetition)?;
    column.close()
}

fn schema() -> Result<Type, ParquetError> {
    parse_message_type(SCHEMA)
}

/// Checks one batch, decompresses it and parses its records.
fn decode_batch(
    batch: &[u8],
    header: &BatchHeader,
    partition: i32,
) -> Result<Vec<ExportedRecord>, ExportError> {
    batch::validate(batch, usize::MAX)?;
    let base_offset = header.base_offset;
    let body = records::decompress(batch, header).map_err(|message| ExportError::Decompress {
        base_offset,
        message,
    })?;
    let body = Bytes::from(body.into_owned());
    let malformed = |reason| ExportError::Records {
        base_offset,
        reason,
    };
    // `validate` guarantees a positive count; bounding it by the bytes present keeps a
    // crafted count from reserving unbounded memory.
    let count = usize::try_from(header.records_count).unwrap_or(0);
    if count > body.len() / MIN_RECORD_SIZE {
        return Err(malformed("more records claimed than bytes hold"));
    }
    let mut records = Vec::with_capacity(count);
    let mut reader = Reader(&body);
    for _ in 0..count {
        records.push(parse_record(&body, &mut reader, header, partition).map_err(malformed)?);
    }
    if !reader.0.is_empty() {
        return Err(malformed("bytes after the last record"));
    }
    Ok(records)
}

/// Parses one record of a v2 batch, the way Kafka's consumer does: negative key, value and
/// header value lengths mean null. Header keys that are not UTF-8 are converted lossily
/// (U+FFFD) rather than failing the export; Kafka's Java client only writes UTF-8 keys.
fn parse_record(
    batch: &Bytes,
    reader: &mut Reader<'_>,
    header: &BatchHeader,
    partition: i32,
) -> Result<ExportedRecord, &'static str> {
    let length = usize::try_from(reader.varint()?).map_err(|_| "negative record length")?;
    let mut body = Reader(reader.bytes(length)?);
    body.u8()?; // Record attributes: unused in v2.
    let timestamp_delta = body.varlong()?;
    let offset_delta = body.varint()?;
    // Slices of `batch`, shared rather than copied.
    let field = |body: &mut Reader<'_>| -> Result<Option<Bytes>, &'static str> {
        match usize::try_from(body.varint()?) {
            Ok(len) => body.bytes(len).map(|b| Some(batch.slice_ref(b))),
            Err(_) => Ok(None),
        }
    };
    let key = field(&mut body)?;
    let value = field(&mut body)?;
    let count = usize::try_from(body.varint()?).map_err(|_| "negative header count")?;
    // Each header takes at least two bytes, which bounds the reservation.
    let mut headers = Vec::with_capacity(count.min(body.0.len() / 2));
    for _ in 0..count {
        let key = field(&mut body)?.ok_or("null header key")?;
        let value = field(&mut body)?;
        headers.push((String::from_utf8_lossy(&key).into_owned(), value));
    }
    if !body.0.is_empty() {
        return Err("bytes after the last header");
    }
    let offset = header
        .base_offset
        .checked_add(i64::from(offset_delta))
        .ok_or("offset overflows")?;
    let timestamp = if header.is_log_append_time() {
        header.max_timestamp
    } else {
        header
            .base_timestamp
            .checked_add(timestamp_delta)
            .ok_or("timestamp overflows")?
    };
    Ok(ExportedRecord {
        partition,
        offset,
        timestamp,
        key,
        value,
        headers,
    })
}

/// One exported record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedRecord {
    pub partition: i32,
    pub offset: i64,
    /// Epoch milliseconds.
    pub timestamp: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    /// In record order, repeated keys kept.
    pub headers: Vec<(String, Option<Bytes>)>,
}

/// Reads an exported file back, for tools and tests that check an export. Holds all records
/// in memory; files of another schema are refused.
pub fn read_export(data: Bytes) -> Result<Vec<ExportedRecord>, ExportError> {
    let reader = SerializedFileReader::new(data)?;
    let expected = schema()?;
    let found = reader.metadata().file_metadata().schema();
    if *found != expected {
        return Err(ExportError::NotAnExport(
            "its schema differs from the export schema".into(),
        ));
    }
    let mut records = Vec::with_capacity(
        usize::try_from(reader.metadata().file_metadata().num_rows()).unwrap_or(0),
    );
    for row in reader.get_row_iter(None)? {
        records.push(exported_record(row?)?);
    }
    Ok(records)
}

fn exported_record(row: Row) -> Result<ExportedRecord, ExportError> {
    let mut record = ExportedRecord {
        partition: 0,
        offset: 0,
        timestamp: 0,
        key: None,
        value: None,
        headers: Vec::new(),
    };
    for (name, field) in row.into_columns() {
        match (name.as_str(), field) {
            ("partition", Field::Int(partition)) => record.partition = partition,
            ("offset", Field::Long(offset)) => record.offset = offset,
            ("timestamp", Field::TimestampMillis(timestamp)) => record.timestamp = timestamp,
            ("key", field) => record.key = optional_bytes(&name, &field)?,
            ("value", field) => record.value = optional_bytes(&name, &field)?,
            ("headers", Field::ListInternal(list)) => {
                record.headers = list
                    .elements()
                    .iter()
                    .map(exported_header)
                    .collect::<Result<_, _>>()?;
            }
            ("headers", Field::Null) => {}
            (_, field) => return Err(unexpected(&name, &field)),
        }
    }
    Ok(record)
}

fn exported_header(element: &Field) -> Result<(String, Option<Bytes>), ExportError> {
    let Field::Group(header) = element else {
        return Err(unexpected("headers", element));
    };
    let mut key = None;
    let mut value = None;
    for (name, field) in header.get_column_iter() {
        match (name.as_str(), field) {
            ("key", Field::Str(k)) => key = Some(k.clone()),
            ("value", field) => value = optional_bytes(name, field)?,
            (_, field) => return Err(unexpected(name, field)),
        }
    }
    let key = key.ok_or_else(|| ExportError::NotAnExport("header without a key".into()))?;
    Ok((key, value))
}

fn optional_bytes(name: &str, field: &Field) -> Result<Option<Bytes>, ExportError> {
    match field {
        Field::Bytes(bytes) => Ok(Some(Bytes::copy_from_slice(bytes.data()))),
        Field::Null => Ok(None),
        field => Err(unexpected(name, field)),
    }
}

fn unexpected(name: &str, field: &Field) -> ExportError {
    ExportError::NotAnExport(format!("unexpected value {field} in column {name}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::HEADER_SIZE;
    use crate::batch::set_log_append_time;
    use bytes::BytesMut;
    use kafka_protocol::protocol::StrBytes;
    use kafka_protocol::records::{
        Compression as Codec, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };
    use parquet::basic::{LogicalType, TimeUnit};

    const PARTITION: i32 = 7;
    const CODECS: [Codec; 5] = [
        Codec::None,
        Codec::Gzip,
        Codec::Snappy,
        Codec::Lz4,
        Codec::Zstd,
    ];
    /// Bytes of the batch header where the CRC sits and where its coverage starts.
    const CRC_AT: usize = 17;
    const CRC_FROM: usize = 21;

    /// A record of a mix that covers null keys, null and empty values, and no, one or several
    /// headers with empty and null values.
    fn sample(offset: i64) -> ExportedRecord {
        let i = offset;
        ExportedRecord {
            partition: PARTITION,
            offset,
            timestamp: 1_700_000_000_000 + i * 7,
            key: (i % 4 != 0).then(|| Bytes::from(format!("key-{i}"))),
            value: match i % 5 {
                1 => None,
                2 => Some(Bytes::new()),
                _ => Some(Bytes::from(
                    format!("value-{i}-").repeat(i as usize % 9 + 1),
                )),
            },
            headers: match i % 3 {
                0 => Vec::new(),
                1 => vec![
                    ("trace".into(), Some(Bytes::from(format!("t{i}")))),
                    ("empty".into(), Some(Bytes::new())),
                    ("null".into(), None),
                ],
                _ => vec![("only".into(), Some(Bytes::from(vec![i as u8; 3])))],
            },
        }
    }

    fn kafka_record(r: &ExportedRecord) -> Record {
        Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: r.offset,
            // The encoder starts a new batch where offset - sequence changes.
            sequence: r.offset as i32,
            timestamp: r.timestamp,
            key: r.key.clone(),
            value: r.value.clone(),
            headers: r
                .headers
                .iter()
                .map(|(k, v)| (StrBytes::from_string(k.clone()), v.clone()))
                .collect(),
        }
    }

    /// Encodes records as one batch whose base offset is the first record's offset.
    fn encode(records: &[Record], compression: Codec) -> Vec<u8> {
        let mut buf = BytesMut::new();
        let options = RecordEncodeOptions {
            version: 2,
            compression,
        };
        RecordBatchEncoder::encode(&mut buf, records, &options).unwrap();
        let buf = buf.to_vec();
        assert_eq!(batch::batches(&buf).count(), 1, "one batch expected");
        buf
    }

    /// A chunk of batches of `per_batch` sample records covering `offsets`.
    fn chunk(offsets: std::ops::Range<i64>, per_batch: usize, compression: Codec) -> Vec<u8> {
        let records: Vec<Record> = offsets.map(|o| kafka_record(&sample(o))).collect();
        records
            .chunks(per_batch)
            .flat_map(|batch| encode(batch, compression))
            .collect()
    }

    fn samples(offsets: impl IntoIterator<Item = i64>) -> Vec<ExportedRecord> {
        offsets.into_iter().map(sample).collect()
    }

    fn fix_crc(batch: &mut [u8]) {
        let crc = crc32c::crc32c(&batch[CRC_FROM..]);
        batch[CRC_AT..CRC_FROM].copy_from_slice(&crc.to_be_bytes());
    }

    fn replace_once(buf: &mut [u8], from: &[u8], to: &[u8]) {
        let at = buf.windows(from.len()).position(|w| w == from).unwrap();
        buf[at..at + from.len()].copy_from_slice(to);
    }

    fn row_group_sizes(file: &Bytes) -> Vec<i64> {
        let reader = SerializedFileReader::new(file.clone()).unwrap();
        let groups = reader.metadata().row_groups();
        groups.iter().map(|g| g.num_rows()).collect()
    }

    #[test]
    fn round_trips_every_compression() {
        for codec in CODECS {
            let mut export = ParquetExport::new(PARTITION).unwrap();
            assert_eq!(
                export
                    .add_chunk(&chunk(500..530, 7, codec), 0, i64::MAX)
                    .unwrap(),
                30
            );
            assert_eq!(export.records(), 30);
            assert_eq!(export.next_offset(), Some(530));
            let file = export.finish().unwrap();
            assert_eq!(read_export(file).unwrap(), samples(500..530), "{codec:?}");
        }
    }

    #[test]
    fn chunks_of_mixed_compression_accumulate() {
        let mut export = ParquetExport::new(PARTITION).unwrap();
        let mut next = 0;
        for codec in CODECS {
            let added = export.add_chunk(&chunk(next..next + 10, 4, codec), 0, i64::MAX);
            assert_eq!(added.unwrap(), 10);
            next += 10;
        }
        assert_eq!(export.next_offset(), Some(50));
        assert_eq!(
            read_export(export.finish().unwrap()).unwrap(),
            samples(0..50)
        );
    }

    #[test]
    fn offset_range_cuts_through_batches() {
        let mut export = ParquetExport::new(PARTITION).unwrap();
        let first = chunk(100..115, 5, Codec::Zstd);
        assert_eq!(export.add_chunk(&first, 103, 112).unwrap(), 9);
        assert_eq!(export.next_offset(), Some(112));
        // The rest of the same chunk resumes where the range ended.
        assert_eq!(export.add_chunk(&first, 112, 113).unwrap(), 1);
        // Chunks wholly outside the range, or an empty range, add nothing.
        assert_eq!(export.add_chunk(&first, 0, 100).unwrap(), 0);
        assert_eq!(export.add_chunk(&first, 200, 300).unwrap(), 0);
        assert_eq!(export.add_chunk(&first, 114, 114).unwrap(), 0);
        let second = chunk(115..120, 2, Codec::Lz4);
        assert_eq!(export.add_chunk(&second, 113, 118).unwrap(), 3);
        assert_eq!(export.records(), 13);
        assert_eq!(export.next_offset(), Some(118));
        let expected = samples((103..113).chain(115..118));
        assert_eq!(read_export(export.finish().unwrap()).unwrap(), expected);
    }

    #[test]
    fn keeps_offset_gaps_of_compacted_batches() {
        let kept = [10, 12, 13, 17];
        let records: Vec<Record> = kept.iter().map(|&o| kafka_record(&sample(o))).collect();
        let batch = encode(&records, Codec::Snappy);
        assert_eq!(BatchHeader::parse(&batch).unwrap().offset_count(), 8);
        let mut export = ParquetExport::new(PARTITION).unwrap();
        assert_eq!(export.add_chunk(&batch, 11, 17).unwrap(), 2);
        assert_eq!(export.next_offset(), Some(14));
        assert_eq!(
            read_export(export.finish().unwrap()).unwrap(),
            samples([12, 13])
        );
    }

    #[test]
    fn skips_control_batches() {
        let transactional = |offsets: std::ops::Range<i64>, control: bool| -> Vec<u8> {
            let records: Vec<Record> = offsets
                .map(|o| Record {
                    transactional: true,
                    control,
                    producer_id: 9,
                    producer_epoch: 0,
                    ..kafka_record(&sample(o))
                })
                .collect();
            encode(&records, Codec::None)
        };
        let mut chunk = transactional(0..3, false);
        chunk.extend(transactional(3..4, true));
        let mut export = ParquetExport::new(PARTITION).unwrap();
        assert_eq!(export.add_chunk(&chunk, 0, i64::MAX).unwrap(), 3);
        // A trailing marker does not advance the next offset.
        assert_eq!(export.next_offset(), Some(3));
        let mut next = transactional(4..6, false);
        next.extend(transactional(6..7, true));
        next.extend(transactional(7..8, false));
        assert_eq!(export.add_chunk(&next, 0, i64::MAX).unwrap(), 3);
        assert_eq!(export.next_offset(), Some(8));
        let expected = samples([0, 1, 2, 4, 5, 7]);
        assert_eq!(read_export(export.finish().unwrap()).unwrap(), expected);
    }

    #[test]
    fn log_append_time_batches_take_max_timestamp() {
        for codec in [Codec::None, Codec::Zstd] {
            let mut batch = chunk(0..5, 5, codec);
            set_log_append_time(&mut batch, 99_000);
            let mut export = ParquetExport::new(PARTITION).unwrap();
            export.add_chunk(&batch, 0, i64::MAX).unwrap();
            let records = read_export(export.finish().unwrap()).unwrap();
            let expected: Vec<ExportedRecord> = samples(0..5)
                .into_iter()
                .map(|r| ExportedRecord {
                    timestamp: 99_000,
                    ..r
                })
                .collect();
            assert_eq!(records, expected);
        }
    }

    #[test]
    fn keeps_repeated_and_non_utf8_header_keys() {
        let mut record = sample(0);
        record.headers = vec![
            ("dupA".into(), Some(Bytes::from_static(b"first"))),
            ("dupB".into(), Some(Bytes::from_static(b"second"))),
            ("badX".into(), None),
        ];
        let mut batch = encode(&[kafka_record(&record)], Codec::None);
        replace_once(&mut batch, b"dupB", b"dupA");
        replace_once(&mut batch, b"badX", b"bad\xff");
        fix_crc(&mut batch);
        let mut export = ParquetExport::new(PARTITION).unwrap();
        export.add_chunk(&batch, 0, i64::MAX).unwrap();
        record.headers = vec![
            ("dupA".into(), Some(Bytes::from_static(b"first"))),
            ("dupA".into(), Some(Bytes::from_static(b"second"))),
            ("bad\u{fffd}".into(), None),
        ];
        assert_eq!(read_export(export.finish().unwrap()).unwrap(), [record]);
    }

    #[test]
    fn writes_row_groups_by_record_count() {
        let mut export = ParquetExport::new(PARTITION)
            .unwrap()
            .with_row_group_records(100);
        for start in (0..1050).step_by(150) {
            let chunk = chunk(start..start + 150, 64, Codec::Lz4);
            assert_eq!(export.add_chunk(&chunk, 0, i64::MAX).unwrap(), 150);
        }
        let file = export.finish().unwrap();
        let mut expected_groups = vec![100; 10];
        expected_groups.push(50);
        assert_eq!(row_group_sizes(&file), expected_groups);
        assert_eq!(read_export(file).unwrap(), samples(0..1050));
    }

    #[test]
    fn writes_row_groups_by_buffered_bytes() {
        let value = Bytes::from(vec![b'x'; 1 << 20]);
        let records: Vec<ExportedRecord> = (0..70)
            .map(|offset| ExportedRecord {
                partition: PARTITION,
                offset,
                timestamp: offset,
                key: None,
                value: Some(value.clone()),
                headers: Vec::new(),
            })
            .collect();
        let kafka: Vec<Record> = records.iter().map(kafka_record).collect();
        let mut export = ParquetExport::new(PARTITION).unwrap();
        for batch in kafka.chunks(10) {
            export
                .add_chunk(&encode(batch, Codec::Zstd), 0, i64::MAX)
                .unwrap();
        }
        let file = export.finish().unwrap();
        assert_eq!(row_group_sizes(&file), [64, 6]);
        assert_eq!(read_export(file).unwrap(), records);
    }

    #[test]
    fn empty_export_is_a_valid_file() {
        let export = ParquetExport::new(PARTITION).unwrap();
        assert_eq!(export.records(), 0);
        assert_eq!(export.next_offset(), None);
        let file = export.finish().unwrap();
        assert!(row_group_sizes(&file).is_empty());
        assert_eq!(read_export(file).unwrap(), []);
    }

    #[test]
    fn file_schema_is_what_warehouses_expect() {
        let mut export = ParquetExport::new(PARTITION).unwrap();
        export
            .add_chunk(&chunk(0..3, 3, Codec::None), 0, 3)
            .unwrap();
        let reader = SerializedFileReader::new(export.finish().unwrap()).unwrap();
        let metadata = reader.metadata();
        let columns = metadata.file_metadata().schema_descr().columns();
        let paths: Vec<String> = columns.iter().map(|c| c.path().string()).collect();
        assert_eq!(
            paths,
            [
                "partition",
                "offset",
                "timestamp",
                "key",
                "value",
                "headers.list.element.key",
                "headers.list.element.value"
            ]
        );
        assert_eq!(
            columns[2].logical_type_ref(),
            Some(&LogicalType::timestamp(true, TimeUnit::MILLIS))
        );
        for column in metadata.row_group(0).columns() {
            assert!(matches!(column.compression(), Compression::ZSTD(_)));
        }
    }

    #[test]
    fn refuses_corrupt_chunks_and_stays_usable() {
        let good = chunk(0..10, 5, Codec::None);
        let mut export = ParquetExport::new(PARTITION).unwrap();

        // A bad second batch: nothing of the chunk, not even its good first batch, is added.
        let mut bad = good.clone();
        *bad.last_mut().unwrap() ^= 1;
        let err = export.add_chunk(&bad, 0, i64::MAX).unwrap_err();
        assert!(
            matches!(err, ExportError::Batch(BatchError::CrcMismatch)),
            "{err}"
        );
        let err = export
            .add_chunk(&good[..good.len() - 1], 0, i64::MAX)
            .unwrap_err();
        assert!(
            matches!(err, ExportError::Batch(BatchError::Truncated)),
            "{err}"
        );
        let mut bad = good.clone();
        bad[16] = 1;
        let err = export.add_chunk(&bad, 0, i64::MAX).unwrap_err();
        assert!(
            matches!(err, ExportError::Batch(BatchError::UnsupportedMagic(1))),
            "{err}"
        );
        assert_eq!(export.records(), 0);
        assert_eq!(export.next_offset(), None);

        assert_eq!(export.add_chunk(&good, 0, i64::MAX).unwrap(), 10);
        // The same records again would duplicate rows.
        let err = export.add_chunk(&good, 0, i64::MAX).unwrap_err();
        assert!(
            matches!(
                err,
                ExportError::OffsetOrder {
                    offset: 0,
                    expected: 10
                }
            ),
            "{err}"
        );
        assert_eq!(
            read_export(export.finish().unwrap()).unwrap(),
            samples(0..10)
        );
    }

    #[test]
    fn refuses_malformed_records_with_a_valid_crc() {
        let add = |batch: &[u8]| {
            ParquetExport::new(PARTITION)
                .unwrap()
                .add_chunk(batch, 0, 100)
        };
        let good = chunk(0..3, 3, Codec::None);
        // Fewer records than the batch holds.
        let mut bad = good.clone();
        bad[57..61].copy_from_slice(&2i32.to_be_bytes());
        fix_crc(&mut bad);
        let err = add(&bad).unwrap_err();
        assert!(
            matches!(err, ExportError::Records { base_offset: 0, .. }),
            "{err}"
        );
        // More records than the bytes can hold.
        let gapped: Vec<Record> = [0, 50].iter().map(|&o| kafka_record(&sample(o))).collect();
        let mut bad = encode(&gapped, Codec::None);
        bad[57..61].copy_from_slice(&40i32.to_be_bytes());
        fix_crc(&mut bad);
        let err = add(&bad).unwrap_err();
        assert!(matches!(err, ExportError::Records { .. }), "{err}");
        // Records that claim a compression they do not have, or an unknown codec.
        for codec in [1, 2, 3, 4, 5, 7] {
            let mut bad = good.clone();
            bad[22] |= codec;
            fix_crc(&mut bad);
            let err = add(&bad).unwrap_err();
            assert!(matches!(err, ExportError::Decompress { .. }), "{err}");
        }
    }

    #[test]
    fn garbage_never_panics() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut random = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        // Every byte of real batches changed, with the CRC made to match.
        for codec in CODECS {
            let good = chunk(0..4, 4, codec);
            for at in 0..good.len() {
                let mut bad = good.clone();
                bad[at] ^= (random() as u8) | 1;
                if at >= CRC_FROM {
                    fix_crc(&mut bad);
                }
                let mut export = ParquetExport::new(PARTITION).unwrap();
                let _ = export.add_chunk(&bad, i64::MIN, i64::MAX);
            }
        }
        // Random record bytes behind a valid header.
        for len in 0..400 {
            let mut bad = chunk(0..1, 1, Codec::None)[..HEADER_SIZE].to_vec();
            bad.extend((0..len).map(|_| random() as u8));
            let batch_length = (bad.len() - 12) as i32;
            bad[8..12].copy_from_slice(&batch_length.to_be_bytes());
            bad[22] = (random() % 5) as u8;
            bad[23..27].copy_from_slice(&((random() % 100) as i32).to_be_bytes());
            bad[57..61].copy_from_slice(&1i32.to_be_bytes());
            fix_crc(&mut bad);
            let mut export = ParquetExport::new(PARTITION).unwrap();
            let _ = export.add_chunk(&bad, i64::MIN, i64::MAX);
        }
    }

    #[test]
    fn refuses_files_that_are_not_exports() {
        let err = read_export(Bytes::from_static(b"not parquet at all")).unwrap_err();
        assert!(matches!(err, ExportError::Parquet(_)), "{err}");

        let schema = parse_message_type("message other { required int32 x; }").unwrap();
        let properties = WriterProperties::builder().build();
        let mut writer =
            SerializedFileWriter::new(Vec::new(), schema.into(), properties.into()).unwrap();
        let mut group = writer.next_row_group().unwrap();
        write_column::<Int32Type>(&mut group, &[1], None, None).unwrap();
        group.close().unwrap();
        let file = Bytes::from(writer.into_inner().unwrap());
        let err = read_export(file).unwrap_err();
        assert!(matches!(err, ExportError::NotAnExport(_)), "{err}");
    }

    #[test]
    fn export_can_move_between_tasks() {
        fn assert_send<T: Send>(_: &T) {}
        assert_send(&ParquetExport::new(PARTITION).unwrap());
    }
}
