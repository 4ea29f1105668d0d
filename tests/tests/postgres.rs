//! The agent on the PostgreSQL sequencer: the same produce, fetch and restart behaviour as on
//! the embedded SQLite default, against a throwaway PostgreSQL cluster.

mod common;

use common::*;
use shoal_metadata::testing::TestPostgres;
use shoal_tests::TestAgent;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_and_restart_on_postgres() {
    let Some(postgres) = TestPostgres::start_unless_skipped().expect("test PostgreSQL") else {
        return;
    };
    let url = postgres.create_database().await.expect("test database");
    let agent = TestAgent::start_with(|config| config.metadata_url = url.clone()).await;
    let bootstrap = agent.bootstrap();
    create_topic(&bootstrap, "on-postgres", 3, &[("retention.ms", "3600000")]).await;

    let records = make_records("pg", 5_000, 3);
    let producer = producer(&bootstrap, &[("linger.ms", "5")]);
    let deliveries = send_all(&producer, "on-postgres", &records).await;
    let consumed = consume_from_start(&bootstrap, "on-postgres", &[0, 1, 2], records.len()).await;
    assert_same_records("on-postgres", &records, Some(&deliveries), &consumed);

    let agent = agent.restart().await;
    let consumed = consume_from_start(&bootstrap, "on-postgres", &[0, 1, 2], records.len()).await;
    assert_same_records("on-postgres", &records, Some(&deliveries), &consumed);
    agent.stop().await;
}
