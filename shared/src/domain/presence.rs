//! Agent presence and the offer state machine, as pure functions over an interaction and an
//! agent's state. Backends apply them atomically (`RoutingStore::transition`), so what is allowed
//! is decided here once, and tested here.
//!
//! Presence, as agents know it:
//! - `available`: takes offers while below capacity;
//! - `busy`: working at full capacity (or chose not to take offers);
//! - `working_offline`: takes no offers (after a reject or a missed offer, until they come back);
//! - `reserved` (internal): an offer is pending for them.
//!
//! Accepting makes the agent `busy` once they are at capacity (with the default capacity of 1,
//! always); ending an interaction brings a `busy` agent back to `available`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::agent::Agent;
use super::ids::{AgentId, InteractionId, QueueName};
use super::interaction::{Interaction, InteractionState};
use super::queue::EmailQueue;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Presence {
    Available,
    Busy,
    WorkingOffline,
    Reserved,
}

impl Presence {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Available => "available",
            Self::Busy => "busy",
            Self::WorkingOffline => "working_offline",
            Self::Reserved => "reserved",
        }
    }
}

/// What an agent may set themselves (`reserved` is the system's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChosenPresence {
    Available,
    Busy,
    WorkingOffline,
}

impl From<ChosenPresence> for Presence {
    fn from(p: ChosenPresence) -> Self {
        match p {
            ChosenPresence::Available => Presence::Available,
            ChosenPresence::Busy => Presence::Busy,
            ChosenPresence::WorkingOffline => Presence::WorkingOffline,
        }
    }
}

/// An agent's routing state, stored beside their directory entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentState {
    pub presence: Presence,
    /// Interactions assigned to them and not yet ended.
    pub active: u32,
    /// The interaction offered to them, while `reserved`.
    pub pending_offer: Option<InteractionId>,
    /// Since when they have been free to take work: longest idle is offered first.
    pub idle_since: DateTime<Utc>,
    pub presence_since: DateTime<Utc>,
}

impl AgentState {
    /// A new agent starts working offline: they come in by setting themselves available.
    pub fn new(now: DateTime<Utc>) -> Self {
        Self {
            presence: Presence::WorkingOffline,
            active: 0,
            pending_offer: None,
            idle_since: now,
            presence_since: now,
        }
    }

    /// Whether an offer may go to this agent now.
    pub fn can_take_offer(&self, capacity: u32) -> bool {
        self.presence == Presence::Available && self.pending_offer.is_none() && self.active < capacity
    }

    fn set(&mut self, presence: Presence, now: DateTime<Utc>) {
        if self.presence != presence {
            self.presence = presence;
            self.presence_since = now;
        }
    }
}

/// The routing part of an interaction.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RoutingState {
    /// The agent it is offered to (state `offered`) or assigned to (`assigned`).
    pub agent: Option<AgentId>,
    /// Identifies the current offer, so a late time-out of an earlier offer changes nothing.
    pub offer_id: Option<String>,
    pub offered_at: Option<DateTime<Utc>>,
    pub offer_expires_at: Option<DateTime<Utc>>,
    /// Agents who rejected or missed it: others are offered it first.
    #[serde(default)]
    pub declined_by: Vec<AgentId>,
    #[serde(default)]
    pub transfers: u32,
    /// Who last ended it, for reporting.
    pub ended_by: Option<AgentId>,
}

/// Why a transition was refused: the caller's view of the world was out of date, or the caller
/// may not do it. The API turns these into 403/404/409 with the words below.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the interaction is not waiting in a queue")]
    NotWaiting,
    #[error("the agent cannot take an offer now")]
    AgentNotFree,
    #[error("there is no pending offer of this interaction to you")]
    NoPendingOffer,
    #[error("this offer was already answered or has expired")]
    OfferGone,
    #[error("agents may not reject offers from queue {0}")]
    RejectNotAllowed(QueueName),
    #[error("the interaction is not assigned to you")]
    NotYours,
    #[error("the interaction is already in queue {0}")]
    SameQueue(QueueName),
    #[error("answer your pending offer before changing your presence")]
    OfferPending,
    #[error("no such interaction")]
    UnknownInteraction,
    #[error("no such agent")]
    UnknownAgent,
}

fn agent_of(i: &Interaction) -> Option<&AgentId> {
    i.routing.agent.as_ref()
}

/// Offers a waiting interaction to a free agent.
pub fn offer(
    i: &mut Interaction,
    agent: &Agent,
    state: &mut AgentState,
    offer_id: &str,
    now: DateTime<Utc>,
    timeout: chrono::Duration,
) -> Result<(), Refusal> {
    if i.state != InteractionState::Queued {
        return Err(Refusal::NotWaiting);
    }
    if !state.can_take_offer(agent.capacity) {
        return Err(Refusal::AgentNotFree);
    }
    i.state = InteractionState::Offered;
    i.routing.agent = Some(agent.id.clone());
    i.routing.offer_id = Some(offer_id.to_owned());
    i.routing.offered_at = Some(now);
    i.routing.offer_expires_at = Some(now + timeout);
    i.updated_at = now;
    state.pending_offer = Some(i.id.clone());
    state.set(Presence::Reserved, now);
    Ok(())
}

fn check_pending(i: &Interaction, agent: &AgentId, offer_id: Option<&str>) -> Result<(), Refusal> {
    if i.state != InteractionState::Offered || agent_of(i) != Some(agent) {
        return Err(Refusal::NoPendingOffer);
    }
    if let Some(expected) = offer_id
        && i.routing.offer_id.as_deref() != Some(expected)
    {
        return Err(Refusal::OfferGone);
    }
    Ok(())
}

/// After an offer ends without assignment: the agent stops taking offers until they come back.
fn release_offer(i: &mut Interaction, agent: &AgentId, state: &mut AgentState, now: DateTime<Utc>) {
    i.state = InteractionState::Queued;
    i.routing.agent = None;
    i.routing.offer_id = None;
    i.routing.offer_expires_at = None;
    if !i.routing.declined_by.contains(agent) {
        i.routing.declined_by.push(agent.clone());
    }
    i.updated_at = now;
    if state.pending_offer.as_ref() == Some(&i.id) {
        state.pending_offer = None;
    }
    state.set(Presence::WorkingOffline, now);
}

/// The agent accepts: the interaction is theirs, and they are `busy` once at capacity.
pub fn accept(i: &mut Interaction, agent: &Agent, state: &mut AgentState, now: DateTime<Utc>) -> Result<(), Refusal> {
    check_pending(i, &agent.id, None)?;
    i.state = InteractionState::Assigned;
    i.routing.offer_id = None;
    i.routing.offer_expires_at = None;
    i.updated_at = now;
    state.pending_offer = None;
    state.active += 1;
    let next = if state.active >= agent.capacity { Presence::Busy } else { Presence::Available };
    state.set(next, now);
    Ok(())
}

/// The agent rejects (where the queue allows it): the email goes back to wait for another agent,
/// and the agent works offline.
pub fn reject(
    i: &mut Interaction,
    queue: &EmailQueue,
    agent: &Agent,
    state: &mut AgentState,
    now: DateTime<Utc>,
) -> Result<(), Refusal> {
    check_pending(i, &agent.id, None)?;
    if !queue.allow_reject {
        return Err(Refusal::RejectNotAllowed(queue.name.clone()));
    }
    release_offer(i, &agent.id, state, now);
    Ok(())
}

/// The offer timed out: same as a reject, decided by the clock. Only the offer identified by
/// `offer_id` expires, so a late or redelivered time-out of an earlier offer changes nothing.
pub fn expire(
    i: &mut Interaction,
    agent: &AgentId,
    state: &mut AgentState,
    offer_id: &str,
    now: DateTime<Utc>,
) -> Result<(), Refusal> {
    check_pending(i, agent, Some(offer_id))?;
    release_offer(i, agent, state, now);
    Ok(())
}

fn free_agent(agent: &Agent, state: &mut AgentState, now: DateTime<Utc>) {
    state.active = state.active.saturating_sub(1);
    // Still at capacity (e.g. a new email they started on top of an accepted one): stay busy.
    if state.presence == Presence::Busy && state.active < agent.capacity {
        state.set(Presence::Available, now);
    }
    if state.active < agent.capacity {
        state.idle_since = now;
    }
}

/// The agent ends (wraps up) their interaction and is free for the next one.
pub fn end(i: &mut Interaction, agent: &Agent, state: &mut AgentState, now: DateTime<Utc>) -> Result<(), Refusal> {
    if i.state != InteractionState::Assigned || agent_of(i) != Some(&agent.id) {
        return Err(Refusal::NotYours);
    }
    i.state = InteractionState::Ended;
    i.routing.ended_by = Some(agent.id.clone());
    i.routing.agent = None;
    i.updated_at = now;
    free_agent(agent, state, now);
    Ok(())
}

/// The agent hands their interaction to exactly one other queue: it waits there, and the agent
/// is freed.
pub fn transfer(
    i: &mut Interaction,
    to: &EmailQueue,
    agent: &Agent,
    state: &mut AgentState,
    now: DateTime<Utc>,
) -> Result<(), Refusal> {
    if i.state != InteractionState::Assigned || agent_of(i) != Some(&agent.id) {
        return Err(Refusal::NotYours);
    }
    if i.queue == to.name {
        return Err(Refusal::SameQueue(to.name.clone()));
    }
    i.state = InteractionState::Queued;
    i.queue = to.name.clone();
    i.queued_at = Some(now);
    i.routing = RoutingState { transfers: i.routing.transfers + 1, ..RoutingState::default() };
    i.updated_at = now;
    free_agent(agent, state, now);
    Ok(())
}

/// The agent starts an email of their own (a new email, not an offer): one more interaction in
/// hand, and busy, so no offer interrupts until they end it. An agent with an offer pending stays
/// reserved: the offer decides what is next.
pub fn start_own_email(state: &mut AgentState, now: DateTime<Utc>) {
    state.active += 1;
    if state.presence != Presence::Reserved && state.presence != Presence::Busy {
        state.set(Presence::Busy, now);
    }
}

/// The agent sets their own presence. Coming back `available` makes them the longest idle only
/// from now on.
pub fn set_presence(state: &mut AgentState, to: ChosenPresence, now: DateTime<Utc>) -> Result<(), Refusal> {
    if state.pending_offer.is_some() {
        return Err(Refusal::OfferPending);
    }
    let to = Presence::from(to);
    if to == Presence::Available && state.presence != Presence::Available {
        state.idle_since = now;
    }
    state.set(to, now);
    Ok(())
}

/// Orders agents for an offer: those who have not declined this interaction first, then the
/// longest idle, then by id so the choice is deterministic.
pub fn offer_order(declined_by: &[AgentId], a: (&Agent, &AgentState), b: (&Agent, &AgentState)) -> std::cmp::Ordering {
    let declined = |x: &Agent| declined_by.contains(&x.id);
    declined(a.0).cmp(&declined(b.0)).then(a.1.idle_since.cmp(&b.1.idle_since)).then(a.0.id.cmp(&b.0.id))
}

/// Orders waiting interactions: highest priority first (the queue's priority added), then the
/// longest waiting.
pub fn waiting_order(a: (&Interaction, u8), b: (&Interaction, u8)) -> std::cmp::Ordering {
    let pa = a.0.priority.value() as u16 + a.1 as u16;
    let pb = b.0.priority.value() as u16 + b.1 as u16;
    pb.cmp(&pa).then(a.0.queued_at.cmp(&b.0.queued_at)).then(a.0.id.cmp(&b.0.id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::agent::Role;
    use crate::domain::ids::{Category, ChannelName, EmailAddress, Fingerprint};
    use crate::domain::interaction::{Priority, Sentiment};

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-21T10:00:00Z").unwrap().with_timezone(&Utc)
    }

    fn agent(id: &str, capacity: u32) -> Agent {
        Agent {
            id: AgentId::parse(id).unwrap(),
            name: id.into(),
            email: EmailAddress::parse(&format!("{id}@example.com")).unwrap(),
            queues: vec![QueueName::parse("support").unwrap()],
            capacity,
            role: Role::Agent,
        }
    }

    fn available(t: DateTime<Utc>) -> AgentState {
        let mut s = AgentState::new(t);
        set_presence(&mut s, ChosenPresence::Available, t).unwrap();
        s
    }

    fn interaction(n: u8) -> Interaction {
        let fp = Fingerprint::from_digest([n; 32]);
        Interaction {
            id: InteractionId::for_first_message(&fp),
            channel: ChannelName::parse("support").unwrap(),
            customer: EmailAddress::parse("alice@example.org").unwrap(),
            customer_name: None,
            subject: "Help".into(),
            queue: QueueName::parse("support").unwrap(),
            priority: Priority::NORMAL,
            state: InteractionState::Queued,
            category: Category::parse("general").unwrap(),
            sentiment: Sentiment::Neutral,
            participants: vec![],
            origin: fp,
            message_count: 1,
            created_at: now(),
            updated_at: now(),
            queued_at: Some(now()),
            routing: RoutingState::default(),
        }
    }

    fn queue(allow_reject: bool) -> EmailQueue {
        EmailQueue { allow_reject, ..EmailQueue::named(QueueName::parse("support").unwrap()) }
    }

    const T: chrono::Duration = chrono::Duration::seconds(60);

    #[test]
    fn an_own_email_keeps_offers_away_and_an_agent_at_capacity_stays_busy() {
        let (ana, mut s, mut i) = (agent("ana", 1), available(now()), interaction(1));
        offer(&mut i, &ana, &mut s, "o1", now(), T).unwrap();
        accept(&mut i, &ana, &mut s, now()).unwrap();
        start_own_email(&mut s, now());
        assert_eq!((s.presence, s.active), (Presence::Busy, 2));
        // Ending the accepted one leaves the new email in hand: still at capacity, still busy.
        end(&mut i, &ana, &mut s, now()).unwrap();
        assert_eq!((s.presence, s.active), (Presence::Busy, 1));
        assert!(!s.can_take_offer(ana.capacity));
    }

    #[test]
    fn offer_then_accept_makes_the_agent_busy() {
        let (ana, mut s, mut i) = (agent("ana", 1), available(now()), interaction(1));
        offer(&mut i, &ana, &mut s, "o1", now(), T).unwrap();
        assert_eq!((i.state, s.presence), (InteractionState::Offered, Presence::Reserved));
        // Never offered to two agents: the interaction is no longer waiting.
        let ben = agent("ben", 1);
        assert_eq!(offer(&mut i, &ben, &mut available(now()), "o2", now(), T), Err(Refusal::NotWaiting));
        accept(&mut i, &ana, &mut s, now()).unwrap();
        assert_eq!((i.state, s.presence, s.active), (InteractionState::Assigned, Presence::Busy, 1));
        end(&mut i, &ana, &mut s, now()).unwrap();
        assert_eq!((i.state, s.presence, s.active), (InteractionState::Ended, Presence::Available, 0));
    }

    #[test]
    fn capacity_is_never_exceeded() {
        let ana = agent("ana", 2);
        let mut s = available(now());
        let (mut a, mut b, mut c) = (interaction(1), interaction(2), interaction(3));
        offer(&mut a, &ana, &mut s, "o1", now(), T).unwrap();
        assert_eq!(
            offer(&mut b, &ana, &mut s, "o2", now(), T),
            Err(Refusal::AgentNotFree),
            "one pending offer at a time"
        );
        accept(&mut a, &ana, &mut s, now()).unwrap();
        assert_eq!(s.presence, Presence::Available, "still has room");
        offer(&mut b, &ana, &mut s, "o2", now(), T).unwrap();
        accept(&mut b, &ana, &mut s, now()).unwrap();
        assert_eq!((s.presence, s.active), (Presence::Busy, 2));
        assert_eq!(offer(&mut c, &ana, &mut s, "o3", now(), T), Err(Refusal::AgentNotFree));
    }

    #[test]
    fn reject_sends_the_agent_offline_and_remembers_them() {
        let (ana, mut s, mut i) = (agent("ana", 1), available(now()), interaction(1));
        offer(&mut i, &ana, &mut s, "o1", now(), T).unwrap();
        assert_eq!(
            reject(&mut i, &queue(false), &ana, &mut s, now()),
            Err(Refusal::RejectNotAllowed(queue(false).name))
        );
        reject(&mut i, &queue(true), &ana, &mut s, now()).unwrap();
        assert_eq!((i.state, s.presence), (InteractionState::Queued, Presence::WorkingOffline));
        assert_eq!(i.routing.declined_by, vec![ana.id.clone()]);
        assert_eq!(accept(&mut i, &ana, &mut s, now()), Err(Refusal::NoPendingOffer));
    }

    #[test]
    fn only_the_current_offer_expires() {
        let (ana, mut s, mut i) = (agent("ana", 1), available(now()), interaction(1));
        offer(&mut i, &ana, &mut s, "o1", now(), T).unwrap();
        assert_eq!(expire(&mut i, &ana.id, &mut s, "old", now()), Err(Refusal::OfferGone));
        expire(&mut i, &ana.id, &mut s, "o1", now()).unwrap();
        assert_eq!((i.state, s.presence), (InteractionState::Queued, Presence::WorkingOffline));
        assert_eq!(expire(&mut i, &ana.id, &mut s, "o1", now()), Err(Refusal::NoPendingOffer), "redelivered time-out");
    }

    #[test]
    fn transfer_requeues_elsewhere_and_frees_the_agent() {
        let (ana, mut s, mut i) = (agent("ana", 1), available(now()), interaction(1));
        offer(&mut i, &ana, &mut s, "o1", now(), T).unwrap();
        accept(&mut i, &ana, &mut s, now()).unwrap();
        let billing = EmailQueue::named(QueueName::parse("billing").unwrap());
        assert_eq!(transfer(&mut i, &queue(true), &ana, &mut s, now()), Err(Refusal::SameQueue(queue(true).name)));
        transfer(&mut i, &billing, &ana, &mut s, now()).unwrap();
        assert_eq!((i.state, i.queue.as_str(), i.routing.transfers), (InteractionState::Queued, "billing", 1));
        assert_eq!((s.presence, s.active), (Presence::Available, 0));
        let ben = agent("ben", 1);
        assert_eq!(end(&mut i, &ben, &mut available(now()), now()), Err(Refusal::NotYours));
    }

    #[test]
    fn presence_cannot_change_under_a_pending_offer() {
        let (ana, mut s, mut i) = (agent("ana", 1), available(now()), interaction(1));
        offer(&mut i, &ana, &mut s, "o1", now(), T).unwrap();
        assert_eq!(set_presence(&mut s, ChosenPresence::WorkingOffline, now()), Err(Refusal::OfferPending));
    }

    #[test]
    fn ordering_prefers_priority_waiting_time_and_idle_time() {
        let mut old = interaction(1);
        old.queued_at = Some(now() - chrono::Duration::minutes(5));
        let mut urgent = interaction(2);
        urgent.priority = Priority::new(9).unwrap();
        let newer = interaction(3);
        let mut list = [(&newer, 0), (&urgent, 0), (&old, 0)];
        list.sort_by(|a, b| waiting_order(*a, *b));
        assert_eq!(list.map(|x| x.0.id.clone()), [urgent.id.clone(), old.id.clone(), newer.id.clone()]);

        let (ana, ben) = (agent("ana", 1), agent("ben", 1));
        let sa = available(now());
        let sb = available(now() - chrono::Duration::minutes(1));
        assert_eq!(offer_order(&[], (&ana, &sa), (&ben, &sb)), std::cmp::Ordering::Greater, "ben idled longer");
        assert_eq!(
            offer_order(std::slice::from_ref(&ben.id), (&ana, &sa), (&ben, &sb)),
            std::cmp::Ordering::Less,
            "ben declined it"
        );
    }
}
