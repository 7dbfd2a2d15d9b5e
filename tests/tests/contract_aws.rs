//! The backend contract on AWS: S3, DynamoDB and SQS on moto's server
//! (`MAILROOM_TEST_MOTO_URL`, started by `infra/test.sh`). Each test uses its own table, bucket and
//! queues, so they run in parallel.

use mailroom_tests::aws::moto;
use mailroom_tests::contract;

#[tokio::test]
async fn threading_and_duplicates() {
    let Some(m) = moto().await else { return };
    contract::threading_and_duplicates(&m).await;
}

#[tokio::test]
async fn quarantine_keeps_everything() {
    let Some(m) = moto().await else { return };
    contract::quarantine_keeps_everything(&m).await;
}

#[tokio::test]
async fn retry_after_a_crash_finishes_the_same_decision() {
    let Some(m) = moto().await else { return };
    contract::retry_after_a_crash_finishes_the_same_decision(&m).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_deliveries_record_once() {
    let Some(m) = moto().await else { return };
    contract::concurrent_deliveries_record_once(&m).await;
}

#[tokio::test]
async fn queue_visibility_and_redelivery() {
    let Some(m) = moto().await else { return };
    contract::queue_visibility_and_redelivery(&m).await;
}

#[tokio::test]
async fn dead_letters_after_max_receives_and_replay() {
    let Some(m) = moto().await else { return };
    contract::dead_letters_after_max_receives_and_replay(&m).await;
}
