//! The records inside a v2 record batch: the batch's compression codec, and Kafka's record
//! field encoding read straight off the bytes. kafka-protocol's record decoder merges
//! duplicate header keys, refuses non-UTF-8 ones and trusts record counts, so log compaction
//! and Parquet export read records here instead.

use std::borrow::Cow;

use bytes::Bytes;
use kafka_protocol::compression::{Decompressor, Gzip, Lz4, Snappy, Zstd};
use kafka_protocol::records::Compression;

use crate::batch::{BatchHeader, HEADER_SIZE};

/// Bits 0-2 of the batch attributes.
pub(crate) const COMPRESSION_MASK: i16 = 0x7;

/// The batch's compression codec.
pub(crate) fn codec(header: &BatchHeader) -> Result<Compression, String> {
    Ok(match header.attributes & COMPRESSION_MASK {
        0 => Compression::None,
        1 => Compression::Gzip,
        2 => Compression::Snappy,
        3 => Compression::Lz4,
        4 => Compression::Zstd,
        other => return Err(format!("unknown compression codec {other}")),
    })
}

/// The uncompressed records of a batch (borrowed when the batch is not compressed).
pub(crate) fn decompress<'a>(
    batch: &'a [u8],
    header: &BatchHeader,
) -> Result<Cow<'a, [u8]>, String> {
    let mut data = &batch[HEADER_SIZE..];
    let take = |buf: &mut Bytes| Ok(std::mem::take(buf));
    let decompressed = match codec(header)? {
        Compression::None => return Ok(Cow::Borrowed(data)),
        Compression::Gzip => Gzip::decompress(&mut data, take),
        Compression::Snappy => Snappy::decompress(&mut data, take),
        Compression::Lz4 => Lz4::decompress(&mut data, take),
        Compression::Zstd => Zstd::decompress(&mut data, take),
    };
    decompressed
        .map(|bytes| Cow::Owned(Vec::from(bytes)))
        .map_err(|e| format!("{e:#}"))
}

/// Reads Kafka's record fields off the front of a slice.
pub(crate) struct Reader<'a>(pub(crate) &'a [u8]);

impl<'a> Reader<'a> {
    pub(crate) fn u8(&mut self) -> Result<u8, &'static str> {
        let (&first, rest) = self.0.split_first().ok_or("record truncated")?;
        self.0 = rest;
        Ok(first)
    }

    pub(crate) fn bytes(&mut self, length: usize) -> Result<&'a [u8], &'static str> {
        if length > self.0.len() {
            return Err("record truncated");
        }
        let (bytes, rest) = self.0.split_at(length);
        self.0 = rest;
        Ok(bytes)
    }

    /// A zigzag varint of at most `max_bytes` bytes.
    pub(crate) fn zigzag(&mut self, max_bytes: u32) -> Result<i64, &'static str> {
        let mut value = 0u64;
        for i in 0..max_bytes {
            let byte = self.u8()?;
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte < 0x80 {
                return Ok((value >> 1) as i64 ^ -((value & 1) as i64));
            }
        }
        Err("varint too long")
    }

    pub(crate) fn varint(&mut self) -> Result<i32, &'static str> {
        i32::try_from(self.zigzag(5)?).map_err(|_| "varint out of range")
    }

    pub(crate) fn varlong(&mut self) -> Result<i64, &'static str> {
        self.zigzag(10)
    }

    /// A length-prefixed byte string where length -1 means null.
    pub(crate) fn nullable_bytes(&mut self) -> Result<Option<&'a [u8]>, &'static str> {
        match self.varint()? {
            -1 => Ok(None),
            length => {
                let length = usize::try_from(length).map_err(|_| "negative length")?;
                self.bytes(length).map(Some)
            }
        }
    }
}
