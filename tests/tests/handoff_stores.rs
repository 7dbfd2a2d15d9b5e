//! The handoff's own stores (handoff records with optimistic concurrency, CRM settings) hold the
//! same contract in memory, on the embedded backend and on DynamoDB (moto).

use std::sync::Arc;

use chrono::{Duration, Utc};
use mailroom::adapters::dataverse::{DynamoCrmSettingsStore, DynamoHandoffStore};
use mailroom::adapters::embedded::EmbeddedBackend;
use mailroom::adapters::local_crm::{EmbeddedCrmState, MemoryCrmSettingsStore, MemoryHandoffStore};
use mailroom::domain::crm::{
    CrmBackend, CrmSettings, DataverseConnection, HandoffKey, HandoffRecord, HandoffStage, IncidentId, TicketNumber,
};
use mailroom::domain::ids::InteractionId;
use mailroom::ports::BackendError;
use mailroom::ports::crm::{CrmSettingsStore, HandoffStore};
use mailroom_tests::aws::{moto, unique_name};

async fn handoff_contract(store: Arc<dyn HandoffStore>) {
    let id = InteractionId::parse("X7QS1J3FMJ7X").unwrap();
    let key = HandoffKey::interaction(&id);
    assert!(store.get(&key).await.unwrap().is_none());
    let now = Utc::now();
    let record = HandoffRecord::new(key.clone(), IncidentId::for_interaction(&id), now);
    let stored = store.put(&record).await.expect("first write");
    assert_eq!(stored.version, 1);
    // A second first write (another worker) conflicts.
    assert!(matches!(store.put(&record).await, Err(BackendError::Conflict { .. })));

    let mut next = stored.clone();
    next.stage = HandoffStage::Created;
    next.ticket_number = Some(TicketNumber::parse("CAS-01000-A1B2C3").unwrap());
    next.updated_at = now + Duration::seconds(1);
    let next = store.put(&next).await.expect("update at the current version");
    assert_eq!(next.version, 2);
    // A write based on the old version loses.
    assert!(matches!(store.put(&stored).await, Err(BackendError::Conflict { .. })));
    let read = store.get(&key).await.unwrap().unwrap();
    assert_eq!(read, next);

    let other = InteractionId::parse("X7QS1J3FMJ7Y").unwrap();
    let mut older = HandoffRecord::new(HandoffKey::interaction(&other), IncidentId::for_interaction(&other), now);
    older.updated_at = now - Duration::seconds(5);
    store.put(&older).await.unwrap();
    let recent = store.recent(10).await.unwrap();
    assert_eq!(recent.iter().map(|r| r.key.clone()).collect::<Vec<_>>(), vec![key, older.key]);
    assert_eq!(store.recent(1).await.unwrap().len(), 1);
}

async fn settings_contract(store: Arc<dyn CrmSettingsStore>) {
    assert!(store.load().await.unwrap().is_none());
    let mut settings = CrmSettings::local_defaults(Utc::now());
    store.save(&settings).await.unwrap();
    settings.backend = CrmBackend::Dataverse;
    settings.revision = 2;
    settings.dataverse = Some(DataverseConnection {
        environment_url: "https://contoso.crm.dynamics.com".into(),
        tenant: "contoso.onmicrosoft.com".into(),
        client_id: "c".into(),
        authority: "https://login.microsoftonline.com".into(),
    });
    store.save(&settings).await.unwrap();
    assert_eq!(store.load().await.unwrap(), Some(settings));
}

#[tokio::test]
async fn memory_stores() {
    handoff_contract(Arc::new(MemoryHandoffStore::default())).await;
    settings_contract(Arc::new(MemoryCrmSettingsStore::default())).await;
}

#[tokio::test]
async fn embedded_stores() {
    let dir = tempfile::tempdir().unwrap();
    let backend = EmbeddedBackend::open(dir.path()).unwrap();
    let state = Arc::new(EmbeddedCrmState::open(&backend).unwrap());
    handoff_contract(state.clone()).await;
    settings_contract(state).await;
    // It survives a restart.
    drop(backend);
    let backend = EmbeddedBackend::open(dir.path()).unwrap();
    let state = EmbeddedCrmState::open(&backend).unwrap();
    assert_eq!(state.recent(10).await.unwrap().len(), 2);
}

#[tokio::test]
async fn dynamodb_stores() {
    let Some(moto) = moto().await else { return };
    let table = unique_name("mr-handoff");
    moto.create_table(&table).await;
    handoff_contract(Arc::new(DynamoHandoffStore::new(moto.dynamodb.clone(), &table))).await;
    settings_contract(Arc::new(DynamoCrmSettingsStore::new(moto.dynamodb.clone(), &table))).await;
}
