//! The compactor's metrics: how much merging waits, and what each pass did. A backlog that
//! keeps growing means the compactor cannot keep up with the fleet's flushes.

use crate::PassReport;

/// Objects waiting to be merged (small enough and old enough), as of the last pass.
pub const BACKLOG_OBJECTS: &str = "shoal_compactor_backlog_objects";
/// Their bytes.
pub const BACKLOG_BYTES: &str = "shoal_compactor_backlog_bytes";
/// Passes by `outcome` (ok, failed: a pass that could not run at all).
pub const PASSES: &str = "shoal_compactor_passes_total";
/// Pass wall time, seconds.
pub const PASS_DURATION: &str = "shoal_compactor_pass_duration_seconds";

const OBJECTS_MERGED: &str = "shoal_compactor_objects_merged_total";
const BYTES_MERGED: &str = "shoal_compactor_bytes_merged_total";
const PARTITIONS_TRUNCATED: &str = "shoal_compactor_partitions_truncated_total";
const RECORDS_REMOVED: &str = "shoal_compactor_records_removed_total";
const RECORDS_EXPORTED: &str = "shoal_compactor_records_exported_total";
const OBJECTS_DELETED: &str = "shoal_compactor_objects_deleted_total";
const JOB_FAILURES: &str = "shoal_compactor_job_failures_total";

/// Registers the help text of this crate's metrics with the installed recorder.
pub fn describe() {
    metrics::describe_gauge!(
        BACKLOG_OBJECTS,
        "Objects waiting to be merged, as of the last compactor pass."
    );
    metrics::describe_gauge!(
        BACKLOG_BYTES,
        "Bytes of the objects waiting to be merged, as of the last compactor pass."
    );
    metrics::describe_counter!(PASSES, "Compactor passes by outcome (ok, failed).");
    metrics::describe_histogram!(PASS_DURATION, "Compactor pass wall time, in seconds.");
    metrics::describe_counter!(OBJECTS_MERGED, "Objects replaced by merges.");
    metrics::describe_counter!(BYTES_MERGED, "Bytes written by merges.");
    metrics::describe_counter!(
        PARTITIONS_TRUNCATED,
        "Times retention advanced a partition's log start offset."
    );
    metrics::describe_counter!(
        RECORDS_REMOVED,
        "Records removed by cleaning compacted topics."
    );
    metrics::describe_counter!(RECORDS_EXPORTED, "Records exported to Parquet.");
    metrics::describe_counter!(
        OBJECTS_DELETED,
        "Objects deleted by garbage collection, by kind (unreferenced, upload)."
    );
    metrics::describe_counter!(
        JOB_FAILURES,
        "Compactor jobs that failed and will be retried next pass."
    );
}

/// Adds one pass's work to the counters.
pub(crate) fn record(report: &PassReport) {
    metrics::counter!(OBJECTS_MERGED).increment(report.objects_merged);
    metrics::counter!(BYTES_MERGED).increment(report.bytes_merged);
    metrics::counter!(PARTITIONS_TRUNCATED).increment(report.partitions_truncated);
    metrics::counter!(RECORDS_REMOVED).increment(report.records_removed);
    metrics::counter!(RECORDS_EXPORTED).increment(report.records_exported);
    metrics::counter!(OBJECTS_DELETED, "kind" => "unreferenced").increment(report.objects_deleted);
    metrics::counter!(OBJECTS_DELETED, "kind" => "upload").increment(report.uploads_deleted);
    metrics::counter!(JOB_FAILURES).increment(report.failures);
}
