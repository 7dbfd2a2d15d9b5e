//! Deciding which conversation an inbound email belongs to, and recording why.
//!
//! A match by header or by subject token only counts when the sender already takes part in that
//! conversation: a stranger who quotes someone else's Message-ID or ticket token starts a new
//! interaction (field lessons: Zammad #5064, Chatwoot #13502, Dynamics KA-22936).

use std::sync::LazyLock;

use regex::Regex;

use super::ids::{EmailAddress, InteractionId, MessageId};
use super::interaction::Interaction;

static TOKEN: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)\[MR-([0-9A-HJKMNP-TV-Z]{12})\]").expect("static pattern"));

/// The reference tokens (`[MR-XXXXXXXXXXXX]`) found in a subject, in order.
pub fn reference_tokens(subject: &str) -> Vec<InteractionId> {
    TOKEN.captures_iter(subject).filter_map(|c| InteractionId::parse(&c[1]).ok()).collect()
}

/// A message we hold whose Message-ID an inbound email refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadCandidate {
    pub message_id: MessageId,
    pub interaction_id: InteractionId,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ThreadDecision {
    Join { interaction: Box<Interaction>, reason: String },
    New { reason: String },
}

/// Decides from what the store found. `by_header` is in the order of `thread_parents` (In-Reply-To
/// first, then References newest first); `interactions` resolves ids to interactions.
pub fn decide(
    sender: &EmailAddress,
    by_header: &[(ThreadCandidate, Option<Interaction>)],
    by_token: &[(InteractionId, Option<Interaction>)],
) -> ThreadDecision {
    let mut refused: Vec<String> = Vec::new();
    for (candidate, interaction) in by_header {
        match interaction {
            Some(i) if i.is_participant(sender) => {
                return ThreadDecision::Join {
                    interaction: Box::new(i.clone()),
                    reason: format!(
                        "In-Reply-To/References <{}> is a message of interaction {} and the sender takes part in it",
                        candidate.message_id, i.id
                    ),
                };
            }
            Some(i) => refused.push(format!(
                "<{}> belongs to interaction {}, where the sender does not take part",
                candidate.message_id, i.id
            )),
            None => {}
        }
    }
    for (token, interaction) in by_token {
        match interaction {
            Some(i) if i.is_participant(sender) => {
                return ThreadDecision::Join {
                    interaction: Box::new(i.clone()),
                    reason: format!(
                        "subject carries reference token {} and the sender takes part in it",
                        token.reference_token()
                    ),
                };
            }
            Some(i) => refused.push(format!(
                "subject token {} names interaction {}, where the sender does not take part",
                token.reference_token(),
                i.id
            )),
            None => refused.push(format!("subject token {} names no known interaction", token.reference_token())),
        }
    }
    let reason = if refused.is_empty() {
        "no reference to a conversation we hold".to_string()
    } else {
        format!("not threaded: {}", refused.join("; "))
    };
    ThreadDecision::New { reason }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ids::{Category, ChannelName, Fingerprint, QueueName};
    use crate::domain::interaction::{InteractionState, Priority, Sentiment};

    fn interaction(customer: &str) -> Interaction {
        let fp = Fingerprint::from_digest([1u8; 32]);
        Interaction {
            id: InteractionId::for_first_message(&fp),
            channel: ChannelName::parse("support").unwrap(),
            customer: EmailAddress::parse(customer).unwrap(),
            customer_name: None,
            subject: "Help".into(),
            queue: QueueName::parse("support").unwrap(),
            priority: Priority::NORMAL,
            state: InteractionState::Queued,
            category: Category::parse("general").unwrap(),
            sentiment: Sentiment::Neutral,
            participants: vec![EmailAddress::parse("bob@example.org").unwrap()],
            origin: fp,
            message_count: 1,
            created_at: chrono::Utc::now(),
            updated_at: chrono::Utc::now(),
            queued_at: None,
            routing: Default::default(),
        }
    }

    fn cand(i: &Interaction) -> ThreadCandidate {
        ThreadCandidate { message_id: MessageId::parse("a1@example.org").unwrap(), interaction_id: i.id.clone() }
    }

    #[test]
    fn participants_join_strangers_do_not() {
        let i = interaction("alice@example.org");
        let alice = EmailAddress::parse("alice@example.org").unwrap();
        let bob = EmailAddress::parse("bob@example.org").unwrap();
        let mallory = EmailAddress::parse("mallory@example.net").unwrap();
        let found = vec![(cand(&i), Some(i.clone()))];
        assert!(matches!(decide(&alice, &found, &[]), ThreadDecision::Join { .. }));
        assert!(matches!(decide(&bob, &found, &[]), ThreadDecision::Join { .. }));
        match decide(&mallory, &found, &[]) {
            ThreadDecision::New { reason } => assert!(reason.contains("does not take part"), "{reason}"),
            other => panic!("{other:?}"),
        }
        let tokens = vec![(i.id.clone(), Some(i.clone()))];
        assert!(matches!(decide(&alice, &[], &tokens), ThreadDecision::Join { .. }));
        assert!(matches!(decide(&mallory, &[], &tokens), ThreadDecision::New { .. }));
    }

    #[test]
    fn tokens_are_found_in_subjects() {
        let i = interaction("alice@example.org");
        let subject = format!("RE: AW: Help {}", i.id.reference_token().to_lowercase());
        assert_eq!(reference_tokens(&subject), vec![i.id.clone()]);
        assert!(reference_tokens("[MR-short]").is_empty());
    }
}
