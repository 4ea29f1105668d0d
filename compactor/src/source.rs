//! Reading index rows' bytes back for rewriting.

use bytes::{Bytes, BytesMut};
use shoal_metadata::BatchIndexEntry;
use shoal_storage::ObjectStorage;
use shoal_storage::batch::{batches, patch_base_offsets};

use crate::CompactorError;

/// A row's batches with their real base offsets written in, as a reader sees them.
pub(crate) async fn read_row(
    storage: &ObjectStorage,
    entry: &BatchIndexEntry,
) -> Result<Bytes, CompactorError> {
    let raw = storage
        .get_range(
            &entry.object_id,
            entry.position..entry.position + entry.size,
        )
        .await?;
    let mut data = BytesMut::from(raw);
    patch_base_offsets(&mut data, entry.base_offset).map_err(|source| CompactorError::Corrupt {
        object_id: entry.object_id.clone(),
        source,
    })?;
    Ok(data.freeze())
}

/// Checks that a row's batches tile exactly the row's offsets, so rows can be joined and
/// re-patched from their base offset.
pub(crate) fn check_span(entry: &BatchIndexEntry, data: &[u8]) -> Result<(), CompactorError> {
    let mut held = 0i64;
    for item in batches(data) {
        let (header, _) = item.map_err(|source| CompactorError::Corrupt {
            object_id: entry.object_id.clone(),
            source,
        })?;
        held += header.offset_count();
    }
    if held != entry.last_offset - entry.base_offset + 1 {
        return Err(CompactorError::OffsetMismatch {
            object_id: entry.object_id.clone(),
            base_offset: entry.base_offset,
            last_offset: entry.last_offset,
            held,
        });
    }
    Ok(())
}
