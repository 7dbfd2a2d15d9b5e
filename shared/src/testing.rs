//! Deterministic test data shared by the integration tests and the benchmarks: a seeded random
//! number generator and interactions as ingest creates them. The product's own code never uses it.

use chrono::Utc;

use crate::domain::ids::{Category, ChannelName, EmailAddress, Fingerprint, InteractionId, QueueName, RawMailKey};
use crate::domain::interaction::{Direction, Interaction, InteractionState, Priority, Sentiment, StoredMessage};
use crate::domain::journal::Disposition;

/// xorshift64*: small, deterministic per seed, good enough to pick test cases.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// An index into something of length `len` (0 when it is empty).
    pub fn index(&mut self, len: usize) -> usize {
        self.below(len as u64) as usize
    }

    /// True `percent` times in a hundred.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// An interaction waiting in `queue`, created as ingest would, with its first message.
pub fn waiting_interaction(n: u64, queue: &QueueName, priority: u8, age_ms: i64) -> (Interaction, StoredMessage) {
    let mut digest = [0u8; 32];
    digest[..8].copy_from_slice(&n.to_be_bytes());
    digest[8] = 0xAB;
    let fp = Fingerprint::from_digest(digest);
    let id = InteractionId::for_first_message(&fp);
    let at = Utc::now() - chrono::Duration::milliseconds(age_ms);
    let customer = EmailAddress::parse(&format!("customer{n}@example.org")).expect("address");
    let interaction = Interaction {
        id: id.clone(),
        channel: ChannelName::parse("support").expect("name"),
        customer: customer.clone(),
        customer_name: Some(format!("Customer {n}")),
        subject: format!("Question {n}"),
        queue: queue.clone(),
        priority: Priority::new(priority).expect("priority"),
        state: InteractionState::Queued,
        category: Category::parse("general").expect("category"),
        sentiment: Sentiment::Neutral,
        participants: vec![],
        origin: fp.clone(),
        message_count: 1,
        created_at: at,
        updated_at: at,
        queued_at: Some(at),
        routing: Default::default(),
    };
    let message = StoredMessage {
        fingerprint: fp,
        interaction_id: id,
        raw_key: RawMailKey::of(&n.to_be_bytes()),
        direction: Direction::Inbound,
        message_id: None,
        conversation_key: None,
        from: customer,
        from_name: None,
        to: vec![],
        cc: vec![],
        subject: format!("Question {n}"),
        sent_at: None,
        received_at: at,
        text_body: "Hello".into(),
        body_truncated: false,
        attachments: vec![],
        degraded: vec![],
        disposition: Disposition::New,
        reason: String::new(),
        category: Category::parse("general").expect("category"),
        sentiment: Sentiment::Neutral,
    };
    (interaction, message)
}
