//! What lands in the object store: immutable objects whose footers describe their chunks,
//! holding exactly the batches producers sent, grouped by partition.

mod common;

use common::*;
use shoal_storage::batch;
use shoal_storage::object::decode_footer;
use shoal_tests::TestAgent;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_hold_every_acknowledged_batch_with_a_valid_footer() {
    let agent = TestAgent::start().await;
    let bootstrap = agent.bootstrap();
    create_topic(&bootstrap, "stored", 3, &[]).await;
    let records = make_records("stored", 2_000, 3);
    let producer = producer(&bootstrap, &[]);
    send_all(&producer, "stored", &records).await;

    let dir = agent.data_dir().join("objects");
    let mut offsets_per_partition = std::collections::BTreeMap::<i32, i64>::new();
    let mut objects = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(name.len(), 26, "object keys are ULIDs: {name}");
        let bytes = std::fs::read(&path).unwrap();
        let chunks = decode_footer(&bytes).expect("every object has a valid footer");
        assert!(!chunks.is_empty());
        for chunk in chunks {
            let data = &bytes[chunk.position as usize..(chunk.position + chunk.size) as usize];
            let validated = batch::validate(data, 1 << 20).expect("stored batches stay valid");
            assert_eq!(validated.offset_count, chunk.offset_count);
            assert_eq!(validated.max_timestamp, chunk.max_timestamp);
            *offsets_per_partition.entry(chunk.partition).or_default() += chunk.offset_count;
        }
        objects += 1;
    }
    assert!(objects > 0);
    // Every record is in exactly one chunk of one object.
    let total: i64 = offsets_per_partition.values().sum();
    assert_eq!(total, records.len() as i64);
    assert_eq!(
        offsets_per_partition.keys().copied().collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    agent.stop().await;
}
