//! The CRM side of a handoff (Dynamics 365 / Dataverse, or the Local CRM): record ids, option-set
//! values, the case transcript, name splitting, the contact-matching rule, and the handoff record
//! that makes every step idempotent.
//!
//! Pure values and rules: no HTTP, no SQL. The Dataverse and Local CRM adapters and the handoff use
//! case all work with these.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::ids::{AgentId, EmailAddress, Fingerprint, InteractionId, InvalidValue};
use super::interaction::{Priority, Sentiment};

fn invalid(kind: &'static str, reason: &'static str) -> InvalidValue {
    InvalidValue { kind, reason }
}

/// Parses a GUID in any of the forms people paste (`{..}`, upper case, surrounding space) into the
/// lower-case hyphenated form Dataverse returns.
fn parse_guid(raw: &str, kind: &'static str) -> Result<String, InvalidValue> {
    let s = raw.trim().trim_start_matches('{').trim_end_matches('}');
    let bytes = s.as_bytes();
    let well_formed = bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        });
    if well_formed { Ok(s.to_ascii_lowercase()) } else { Err(invalid(kind, "it is not a GUID")) }
}

/// A name-based GUID: the first 16 bytes of SHA-256 over the name, marked as an RFC 9562 version 8
/// (custom) UUID. The same name always gives the same id, which is what makes a retried handoff
/// find the record its first attempt created instead of creating a second one.
fn derive_guid(name: &str) -> String {
    let digest = Sha256::digest(name.as_bytes());
    let bytes: [u8; 16] = digest[..16].try_into().expect("16 bytes");
    uuid::Builder::from_custom_bytes(bytes).into_uuid().hyphenated().to_string()
}

macro_rules! guid_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
                parse_guid(raw, $kind).map(Self)
            }

            /// The deterministic id for `name` (see [`derive_guid`]).
            pub fn derive(name: &str) -> Self {
                Self(derive_guid(name))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidValue;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::parse(&value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> Self {
                value.0
            }
        }
    };
}

guid_id!(
    /// A contact (`contactid`).
    ContactId,
    "contact id"
);
guid_id!(
    /// An incident, called a case in the UI (`incidentid`).
    IncidentId,
    "incident id"
);
guid_id!(
    /// A Dynamics queue (`queueid`); not one of Mailroom's own email queues.
    CrmQueueId,
    "queue id"
);
guid_id!(
    /// A user or team that can own records (`systemuserid` / `teamid`).
    CrmPrincipalId,
    "owner id"
);
guid_id!(
    /// An email activity (`activityid`).
    ActivityId,
    "activity id"
);
guid_id!(
    /// A note (`annotationid`).
    NoteId,
    "note id"
);

impl IncidentId {
    /// The incident of an email interaction: one per interaction, whatever happens to retries.
    pub fn for_interaction(id: &InteractionId) -> Self {
        Self::derive(&format!("mailroom:incident:interaction:{id}"))
    }

    /// The incident of an AI assistant's handoff, scoped to the assistant so two assistants
    /// cannot collide on the same idempotency key.
    pub fn for_ai_handoff(client: &AgentId, key: &IdempotencyKey) -> Self {
        Self::derive(&format!("mailroom:incident:ai:{client}:{key}"))
    }
}

impl ContactId {
    /// The contact Mailroom creates for an unknown sender. Deterministic, so two handoffs racing
    /// for the same new sender create one contact, not two.
    pub fn for_sender(email: &EmailAddress) -> Self {
        Self::derive(&format!("mailroom:contact:{email}"))
    }
}

impl ActivityId {
    /// The email activity that records one message of an interaction on its case.
    pub fn for_message(incident: &IncidentId, message: &Fingerprint) -> Self {
        Self::derive(&format!("mailroom:email:{incident}:{message}"))
    }
}

impl NoteId {
    /// The note holding the full transcript when the description had to be cut.
    pub fn for_transcript(incident: &IncidentId) -> Self {
        Self::derive(&format!("mailroom:note:transcript:{incident}"))
    }

    /// The note carrying attachment `index` of a message.
    pub fn for_attachment(incident: &IncidentId, message: &Fingerprint, index: usize) -> Self {
        Self::derive(&format!("mailroom:note:attachment:{incident}:{message}:{index}"))
    }
}

/// Who owns new cases: a user or a team (`ownerid@odata.bind` to `/systemusers(..)` or `/teams(..)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OwnerKind {
    #[default]
    Systemuser,
    Team,
}

impl OwnerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Systemuser => "systemuser",
            Self::Team => "team",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "systemuser" | "user" => Some(Self::Systemuser),
            "team" => Some(Self::Team),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct OwnerRef {
    pub kind: OwnerKind,
    pub id: CrmPrincipalId,
}

/// The case number Dynamics generates (`CAS-01002-S8K4Y2`): opaque, shown to people.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TicketNumber(String);

impl TicketNumber {
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let s = raw.trim();
        if s.is_empty() || s.len() > 100 || s.chars().any(char::is_control) {
            return Err(invalid("ticket number", "it must be 1 to 100 printable characters"));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TicketNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for TicketNumber {
    type Error = InvalidValue;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<TicketNumber> for String {
    fn from(value: TicketNumber) -> Self {
        value.0
    }
}

/// An AI assistant's idempotency key: 1 to 200 printable characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let s = raw.trim();
        if s.is_empty() || s.chars().count() > 200 || s.chars().any(char::is_control) {
            return Err(invalid("idempotency key", "it must be 1 to 200 printable characters"));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for IdempotencyKey {
    type Error = InvalidValue;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<IdempotencyKey> for String {
    fn from(value: IdempotencyKey) -> Self {
        value.0
    }
}

// ------------------------------------------------------------------------------------------------
// Incident columns and option sets

/// Dataverse limits the handoff has to respect (incident and contact column definitions).
pub mod limits {
    /// `incident.description` (Memo).
    pub const DESCRIPTION: usize = 2000;
    /// `incident.title`.
    pub const TITLE: usize = 200;
    /// `contact.firstname` / `contact.lastname`.
    pub const NAME_PART: usize = 50;
    /// `email.subject`.
    pub const EMAIL_SUBJECT: usize = 400;
    /// `annotation.subject`.
    pub const NOTE_SUBJECT: usize = 500;
    /// `annotation.filename`.
    pub const FILE_NAME: usize = 255;
    /// The org's default `maxuploadfilesize`, applied to the Base64 length.
    pub const DEFAULT_UPLOAD_BYTES: u64 = 5_242_880;
}

/// `caseorigincode` 2: Email.
pub const CASE_ORIGIN_EMAIL: i32 = 2;
/// `caseorigincode` 3: Web, for an AI assistant's (chat) conversation.
pub const CASE_ORIGIN_WEB: i32 = 3;
/// `prioritycode` 2: Normal, the usual org default.
pub const PRIORITY_NORMAL: i32 = 2;

/// Columns Mailroom sets itself; `ticket_properties` may not override them.
pub const RESERVED_COLUMNS: &[&str] = &[
    "caseorigincode",
    "prioritycode",
    "statecode",
    "statuscode",
    "title",
    "description",
    "customerid",
    "ownerid",
    "ticketnumber",
    "incidentid",
];

/// Maps Mailroom's routing priority (1 lowest .. 10 most urgent) onto `prioritycode`:
/// 8-10 High (1), 4-7 Normal (2), 1-3 Low (3). Used only when the admin turns the mapping on;
/// otherwise every case gets the configured default.
pub fn prioritycode_for(priority: Priority) -> i32 {
    match priority.value() {
        8..=10 => 1,
        4..=7 => 2,
        _ => 3,
    }
}

/// How many characters Dataverse counts for a string column: .NET string length, i.e. UTF-16
/// code units (an emoji counts twice).
pub fn dataverse_len(s: &str) -> usize {
    s.encode_utf16().count()
}

/// `s` cut to at most `max` Dataverse characters, never inside a character.
pub fn truncate_dataverse(s: &str, max: usize) -> String {
    let mut used = 0;
    let mut end = 0;
    for (i, c) in s.char_indices() {
        if used + c.len_utf16() > max {
            return s[..i].to_owned();
        }
        used += c.len_utf16();
        end = i + c.len_utf8();
    }
    s[..end].to_owned()
}

/// One option of a choice column, with its label in every language the org has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OptionItem {
    pub value: i32,
    pub labels: Vec<String>,
}

/// A choice (option-set) column of the incident table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OptionSet {
    pub column: String,
    pub options: Vec<OptionItem>,
}

impl OptionSet {
    fn describe_options(&self) -> String {
        self.options
            .iter()
            .map(|o| match o.labels.first() {
                Some(label) => format!("{} {label}", o.value),
                None => o.value.to_string(),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A ticket property as an admin or an AI assistant writes it: the option's integer value, or its
/// label (which Dataverse itself never accepts on write).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TicketPropertyInput {
    Value(i64),
    Label(String),
}

/// Validated custom option-set values for new cases: column logical name to option value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TicketProperties(BTreeMap<String, i32>);

impl TicketProperties {
    pub fn iter(&self) -> impl Iterator<Item = (&str, i32)> {
        self.0.iter().map(|(k, v)| (k.as_str(), *v))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn get(&self, column: &str) -> Option<i32> {
        self.0.get(column).copied()
    }

    /// `self` with `overrides` on top (an AI handoff's own properties over the admin's defaults).
    pub fn merged_with(&self, overrides: &TicketProperties) -> TicketProperties {
        let mut merged = self.0.clone();
        merged.extend(overrides.0.iter().map(|(k, v)| (k.clone(), *v)));
        TicketProperties(merged)
    }

    /// Values already known to be valid (read back from storage).
    pub fn from_validated(values: BTreeMap<String, i32>) -> Self {
        Self(values)
    }
}

/// Why one ticket property cannot be used, in words an admin can act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum PropertyProblem {
    #[error("ticket_properties.{column}: Mailroom sets {column} itself{hint}")]
    Reserved { column: String, hint: String },
    #[error(
        "ticket_properties.{column}: the incident table has no choice column {column:?}; its choice columns are: {available}"
    )]
    UnknownColumn { column: String, available: String },
    #[error("ticket_properties.{column}: {value} is not an option of {column}; accepted values: {accepted}")]
    ValueOutOfRange { column: String, value: i64, accepted: String },
    #[error("ticket_properties.{column}: {label:?} is not a label of {column}; accepted: {accepted}")]
    UnknownLabel { column: String, label: String, accepted: String },
    #[error(
        "ticket_properties.{column}: the label {label:?} names several options ({values}); give the number instead"
    )]
    AmbiguousLabel { column: String, label: String, values: String },
}

impl PropertyProblem {
    pub fn column(&self) -> &str {
        match self {
            Self::Reserved { column, .. }
            | Self::UnknownColumn { column, .. }
            | Self::ValueOutOfRange { column, .. }
            | Self::UnknownLabel { column, .. }
            | Self::AmbiguousLabel { column, .. } => column,
        }
    }
}

/// Label comparison: case-insensitive, surrounding and repeated spaces ignored.
fn normalize_label(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase()
}

/// Checks ticket properties against the incident's option-set metadata. Integers must be one of
/// the column's options. A label is mapped to its value when exactly one option carries it (in
/// any of the org's languages); a label shared by several options is refused rather than guessed.
/// Every problem is reported, not only the first.
pub fn resolve_ticket_properties(
    input: &BTreeMap<String, TicketPropertyInput>,
    option_sets: &[OptionSet],
) -> Result<TicketProperties, Vec<PropertyProblem>> {
    let mut resolved = BTreeMap::new();
    let mut problems = Vec::new();
    for (column, value) in input {
        let column = column.trim();
        if RESERVED_COLUMNS.contains(&column) {
            let hint = match column {
                "prioritycode" => "; set default_priority instead",
                "caseorigincode" => " (2, Email)",
                _ => "",
            };
            problems.push(PropertyProblem::Reserved { column: column.to_owned(), hint: hint.to_owned() });
            continue;
        }
        let Some(set) = option_sets.iter().find(|s| s.column == column) else {
            let mut available: Vec<&str> =
                option_sets.iter().map(|s| s.column.as_str()).filter(|c| !RESERVED_COLUMNS.contains(c)).collect();
            available.sort_unstable();
            problems.push(PropertyProblem::UnknownColumn {
                column: column.to_owned(),
                available: if available.is_empty() { "(none)".into() } else { available.join(", ") },
            });
            continue;
        };
        match value {
            TicketPropertyInput::Value(v) => {
                match i32::try_from(*v).ok().filter(|v| set.options.iter().any(|o| o.value == *v)) {
                    Some(v) => {
                        resolved.insert(column.to_owned(), v);
                    }
                    None => problems.push(PropertyProblem::ValueOutOfRange {
                        column: column.to_owned(),
                        value: *v,
                        accepted: set.describe_options(),
                    }),
                }
            }
            TicketPropertyInput::Label(label) => {
                let wanted = normalize_label(label);
                let mut values: Vec<i32> = set
                    .options
                    .iter()
                    .filter(|o| o.labels.iter().any(|l| normalize_label(l) == wanted))
                    .map(|o| o.value)
                    .collect();
                values.dedup();
                match values.as_slice() {
                    [one] => {
                        resolved.insert(column.to_owned(), *one);
                    }
                    [] => match wanted.parse::<i64>() {
                        // "100000001" written as a string: the value, if it is one.
                        Ok(v) if i32::try_from(v).is_ok_and(|v| set.options.iter().any(|o| o.value == v)) => {
                            resolved.insert(column.to_owned(), v as i32);
                        }
                        _ => problems.push(PropertyProblem::UnknownLabel {
                            column: column.to_owned(),
                            label: label.clone(),
                            accepted: set.describe_options(),
                        }),
                    },
                    several => problems.push(PropertyProblem::AmbiguousLabel {
                        column: column.to_owned(),
                        label: label.clone(),
                        values: several.iter().map(i32::to_string).collect::<Vec<_>>().join(", "),
                    }),
                }
            }
        }
    }
    if problems.is_empty() { Ok(TicketProperties(resolved)) } else { Err(problems) }
}

/// Re-checks stored (integer) properties against current metadata: an admin may have removed an
/// option in Dynamics since they were saved.
pub fn recheck_ticket_properties(
    properties: &TicketProperties,
    option_sets: &[OptionSet],
) -> Result<(), Vec<PropertyProblem>> {
    let input = properties.0.iter().map(|(k, v)| (k.clone(), TicketPropertyInput::Value(i64::from(*v)))).collect();
    resolve_ticket_properties(&input, option_sets).map(|_| ())
}

// ------------------------------------------------------------------------------------------------
// Contacts

/// A contact as the CRM holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactRecord {
    pub id: ContactId,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub full_name: Option<String>,
    /// `emailaddress1`, `emailaddress2`, `emailaddress3`, as stored (not normalised).
    pub emails: [Option<String>; 3],
    pub created_on: Option<DateTime<Utc>>,
}

impl ContactRecord {
    /// Which email column (1, 2 or 3) holds `email`, compared trimmed and case-insensitively.
    pub fn matched_on(&self, email: &EmailAddress) -> Option<u8> {
        self.emails
            .iter()
            .position(|e| e.as_deref().is_some_and(|e| e.trim().eq_ignore_ascii_case(email.as_str())))
            .map(|i| i as u8 + 1)
    }

    pub fn display_name(&self) -> String {
        match (&self.full_name, &self.first_name, &self.last_name) {
            (Some(full), _, _) if !full.trim().is_empty() => full.clone(),
            (_, first, last) => [first.as_deref(), last.as_deref()].into_iter().flatten().collect::<Vec<_>>().join(" "),
        }
    }
}

/// A contact found for a sender, with the column that matched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactMatch {
    pub contact: ContactRecord,
    /// 1, 2 or 3: `emailaddress1` .. `emailaddress3`.
    pub matched_on: u8,
}

/// The contacts that really carry `email` (the server matched case-insensitively, and may apply
/// wildcards to `_`), best first: a match on `emailaddress1` before 2 before 3, then the oldest,
/// then the smallest id. The same input always gives the same order, so every retry and every
/// worker picks the same contact.
pub fn rank_contacts(email: &EmailAddress, found: Vec<ContactRecord>) -> Vec<ContactMatch> {
    let mut matches: Vec<ContactMatch> = found
        .into_iter()
        .filter_map(|c| c.matched_on(email).map(|m| ContactMatch { contact: c, matched_on: m }))
        .collect();
    matches.sort_by(|a, b| {
        a.matched_on
            .cmp(&b.matched_on)
            .then_with(|| match (a.contact.created_on, b.contact.created_on) {
                (Some(x), Some(y)) => x.cmp(&y),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => std::cmp::Ordering::Equal,
            })
            .then_with(|| a.contact.id.cmp(&b.contact.id))
    });
    matches.dedup_by(|a, b| a.contact.id == b.contact.id);
    matches
}

/// First and last name for a new contact. Dataverse's forms require `lastname`, so it is always set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersonName {
    pub first: Option<String>,
    pub last: String,
}

/// Lower-case words that begin a family name ("Ludwig van Beethoven", "Maria de la Cruz").
const SURNAME_PARTICLES: &[&str] = &[
    "van", "von", "de", "del", "della", "der", "den", "di", "da", "das", "dos", "du", "la", "le", "ter", "ten", "st.",
    "bin", "ibn", "al",
];
const NAME_SUFFIXES: &[&str] = &["jr", "jr.", "sr", "sr.", "ii", "iii", "iv", "phd", "md"];

fn capitalize(word: &str) -> String {
    let mut chars = word.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars.flat_map(char::to_lowercase)).collect(),
        None => String::new(),
    }
}

fn fit(part: &str) -> String {
    truncate_dataverse(part.trim(), limits::NAME_PART)
}

/// Splits a sender's display name into first and last name for a new contact.
///
/// - "Moreau, Alice" → Alice / Moreau (the comma form lists the family name first);
/// - "Alice Marie Moreau" → Alice Marie / Moreau; "Maria de la Cruz" → Maria / de la Cruz;
///   "John Smith Jr." → John / Smith Jr.;
/// - a single word → last name only (the column Dataverse's forms require);
/// - no usable name (missing, or just the address again) → from the address: "john.smith@" →
///   John / Smith, otherwise the local part as the last name.
pub fn split_name(display_name: Option<&str>, email: &EmailAddress) -> PersonName {
    let cleaned = display_name
        .map(|n| n.trim().trim_matches(|c| c == '"' || c == '\'').trim())
        // "Alice (via Support)" and "Alice [Sales]": drop the trailing remark.
        .map(|n| n.split(['(', '[']).next().unwrap_or(n).trim())
        .filter(|n| !n.is_empty() && !n.contains('@'))
        .map(|n| n.split_whitespace().collect::<Vec<_>>().join(" "));
    let Some(name) = cleaned else {
        return name_from_address(email);
    };
    if let Some((last, first)) = name.split_once(',') {
        let (last, first) = (last.trim(), first.trim());
        if !last.is_empty() && !first.is_empty() && !first.contains(',') {
            return PersonName { first: Some(fit(first)), last: fit(last) };
        }
    }
    let words: Vec<&str> = name.split(' ').collect();
    if words.len() == 1 {
        return PersonName { first: None, last: fit(words[0]) };
    }
    // A trailing suffix belongs with the family name.
    let mut core = words.len();
    while core > 2 && NAME_SUFFIXES.contains(&words[core - 1].to_lowercase().as_str()) {
        core -= 1;
    }
    let particle = words[1..core - 1].iter().position(|w| SURNAME_PARTICLES.contains(&w.to_lowercase().as_str()));
    let split_at = particle.map(|p| p + 1).unwrap_or(core - 1);
    PersonName { first: Some(fit(&words[..split_at].join(" "))), last: fit(&words[split_at..].join(" ")) }
}

fn name_from_address(email: &EmailAddress) -> PersonName {
    let local = email.local_part();
    let local = local.split('+').next().unwrap_or(local);
    let parts: Vec<&str> = local.split(['.', '_', '-']).filter(|p| !p.is_empty()).collect();
    if parts.len() >= 2 && parts.iter().all(|p| p.chars().all(char::is_alphabetic)) {
        let last = parts.last().expect("two parts");
        let first: Vec<String> = parts[..parts.len() - 1].iter().map(|p| capitalize(p)).collect();
        return PersonName { first: Some(fit(&first.join(" "))), last: fit(&capitalize(last)) };
    }
    PersonName { first: None, last: fit(if local.is_empty() { email.as_str() } else { local }) }
}

// ------------------------------------------------------------------------------------------------
// The transcript and the case description

/// Who wrote a transcript entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Speaker {
    Customer,
    Agent,
    Assistant,
}

impl Speaker {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Customer => "customer",
            Self::Agent => "agent",
            Self::Assistant => "assistant",
        }
    }
}

/// One message of the conversation as it goes into the case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TranscriptEntry {
    pub at: DateTime<Utc>,
    pub speaker: Speaker,
    /// "Alice Moreau <alice@example.org>", or just the address.
    pub author: String,
    pub subject: Option<String>,
    pub text: String,
}

/// The lines above the transcript.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaseHeader {
    /// "email", or "AI assistant" for an AI handoff.
    pub channel: String,
    pub classification: String,
    pub sentiment: Option<Sentiment>,
    pub summary: Option<String>,
}

/// The description to send, and whether the full transcript must go into a note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseDescription {
    pub text: String,
    pub truncated: bool,
    /// Header and every message, uncut: the note's text when `truncated`.
    pub full: String,
}

/// Subject of the note that carries the whole transcript.
pub const TRANSCRIPT_NOTE_SUBJECT: &str = "Full transcript";

/// Drops what a reply quotes of earlier messages (lines starting with `>`, and everything from an
/// "On ... wrote:" or "-----Original Message-----" line on), so each message of the transcript
/// says what is new in it. The first message of a conversation is kept whole.
pub fn strip_quoted_reply(text: &str) -> String {
    let mut kept: Vec<&str> = Vec::new();
    for line in text.lines() {
        let t = line.trim();
        let is_attribution = (t.starts_with("On ") && t.ends_with("wrote:"))
            || t.eq_ignore_ascii_case("-----Original Message-----")
            || t.starts_with("________________________________");
        if is_attribution {
            break;
        }
        if t.starts_with('>') {
            continue;
        }
        kept.push(line.trim_end());
    }
    // Collapse runs of blank lines and trim the ends.
    let mut out = String::new();
    let mut blank = 0;
    for line in kept {
        if line.trim().is_empty() {
            blank += 1;
            continue;
        }
        if !out.is_empty() {
            out.push_str(if blank > 0 { "\n\n" } else { "\n" });
        }
        blank = 0;
        out.push_str(line);
    }
    out
}

fn render_header(header: &CaseHeader) -> String {
    let mut out = format!("Channel: {}\nClassification: {}", header.channel, header.classification);
    if let Some(s) = header.sentiment {
        out.push_str(&format!("\nSentiment: {s}"));
    }
    if let Some(summary) = header.summary.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        out.push_str(&format!("\nSummary: {summary}"));
    }
    out
}

fn render_entry(entry: &TranscriptEntry) -> String {
    let mut out =
        format!("--- {} | {} ({})", entry.at.format("%Y-%m-%d %H:%M UTC"), entry.author.trim(), entry.speaker.as_str());
    if let Some(subject) = entry.subject.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        out.push_str(&format!("\nSubject: {subject}"));
    }
    let text = entry.text.trim();
    out.push('\n');
    out.push_str(if text.is_empty() { "(no text)" } else { text });
    out
}

/// The whole transcript: header, then each message in time order.
pub fn render_transcript(header: &CaseHeader, entries: &[TranscriptEntry]) -> String {
    let mut out = render_header(header);
    out.push_str("\n\nTranscript:");
    for e in entries {
        out.push_str("\n\n");
        out.push_str(&render_entry(e));
    }
    out
}

fn cut_marker(total: usize) -> String {
    let messages = if total == 1 { "1 message".to_owned() } else { format!("{total} messages") };
    format!(
        "\n\n[Cut to fit the case description. The full transcript ({messages}) is in the note \"{TRANSCRIPT_NOTE_SUBJECT}\".]"
    )
}

/// Cuts `text` to at most `max` Dataverse characters at the last line break or space before the
/// limit (never inside a word when a break exists in the last quarter), with an ellipsis.
fn cut_text(text: &str, max: usize) -> String {
    if dataverse_len(text) <= max {
        return text.to_owned();
    }
    let hard = truncate_dataverse(text, max.saturating_sub(1));
    let floor = hard.len() * 3 / 4;
    let at = hard.rfind('\n').filter(|i| *i >= floor).or_else(|| hard.rfind(' ').filter(|i| *i >= floor));
    let kept = at.map(|i| &hard[..i]).unwrap_or(&hard).trim_end();
    format!("{kept}…")
}

/// The case description within Dataverse's limit of `max` characters. When the whole transcript
/// does not fit, it keeps the header and as many whole messages as fit, cuts the next one at a
/// line or word boundary, and ends with a marker pointing at the note with the full transcript.
pub fn case_description(header: &CaseHeader, entries: &[TranscriptEntry], max: usize) -> CaseDescription {
    let full = render_transcript(header, entries);
    if dataverse_len(&full) <= max {
        return CaseDescription { text: full.clone(), truncated: false, full };
    }
    let marker = cut_marker(entries.len());
    let budget = max.saturating_sub(dataverse_len(&marker));
    let mut text = render_header(header);
    text.push_str("\n\nTranscript:");
    for e in entries {
        let piece = format!("\n\n{}", render_entry(e));
        let used = dataverse_len(&text);
        if used + dataverse_len(&piece) <= budget {
            text.push_str(&piece);
            continue;
        }
        // Part of this message, if a useful part fits (a heading and a few words).
        let room = budget.saturating_sub(used);
        if room > 80 {
            text.push_str(&cut_text(&piece, room));
        }
        break;
    }
    if dataverse_len(&text) > budget {
        // Only possible with an enormous header (a huge summary): cut it too.
        text = cut_text(&text, budget);
    }
    text.push_str(&marker);
    debug_assert!(dataverse_len(&text) <= max);
    CaseDescription { text, truncated: true, full }
}

/// `<classification> - <sender name or email>`, within the title's 200 characters.
pub fn case_title(classification: &str, sender_name: Option<&str>, sender: &EmailAddress) -> String {
    let who = sender_name.map(str::trim).filter(|n| !n.is_empty()).unwrap_or(sender.as_str());
    truncate_dataverse(&format!("{} - {who}", classification.trim()), limits::TITLE)
}

// ------------------------------------------------------------------------------------------------
// Settings

/// Which CRM the handoff writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CrmBackend {
    /// The Local CRM in the data directory (`mailroom serve` without a Dynamics tenant).
    #[default]
    Local,
    Dataverse,
}

/// How to reach one Dataverse environment (the secret is stored apart).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataverseConnection {
    /// `https://contoso.crm.dynamics.com`, without a trailing slash.
    pub environment_url: String,
    /// Directory (tenant) id or domain.
    pub tenant: String,
    /// Application (client) id of the app registration.
    pub client_id: String,
    /// The token authority; the Microsoft identity platform unless a test or demo points elsewhere.
    pub authority: String,
}

impl DataverseConnection {
    /// The client-credentials scope: `<environment>/.default`.
    pub fn scope(&self) -> String {
        format!("{}/.default", self.environment_url)
    }
}

/// The saved settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CrmSettings {
    pub backend: CrmBackend,
    pub dataverse: Option<DataverseConnection>,
    /// Every new case is added to this queue (`AddToQueue`).
    pub default_queue_id: Option<CrmQueueId>,
    /// Owner of new cases; the application user when unset.
    pub default_owner: Option<OwnerRef>,
    /// `prioritycode` of new cases.
    pub default_priority: i32,
    /// Derive `prioritycode` from Mailroom's 1-10 priority instead (8-10 High, 4-7 Normal, 1-3 Low).
    #[serde(default)]
    pub map_mailroom_priority: bool,
    /// Custom choice columns set on every case, validated integers.
    #[serde(default)]
    pub ticket_properties: TicketProperties,
    /// Increases with every save; a connected client is rebuilt when it changes.
    pub revision: u64,
    pub updated_at: DateTime<Utc>,
}

impl CrmSettings {
    /// What applies before an admin saved anything: the Local CRM, Normal priority.
    pub fn local_defaults(now: DateTime<Utc>) -> Self {
        Self {
            backend: CrmBackend::Local,
            dataverse: None,
            default_queue_id: None,
            default_owner: None,
            default_priority: PRIORITY_NORMAL,
            map_mailroom_priority: false,
            ticket_properties: TicketProperties::default(),
            revision: 0,
            updated_at: now,
        }
    }
}

// ------------------------------------------------------------------------------------------------
// The handoff record

/// What a handoff record is about: an email interaction, or an AI assistant's conversation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HandoffKey(String);

impl HandoffKey {
    pub fn interaction(id: &InteractionId) -> Self {
        Self(format!("interaction:{id}"))
    }

    pub fn ai(client: &AgentId, key: &IdempotencyKey) -> Self {
        Self(format!("ai:{client}:{key}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn interaction_id(&self) -> Option<InteractionId> {
        self.0.strip_prefix("interaction:").and_then(|id| InteractionId::parse(id).ok())
    }
}

impl fmt::Display for HandoffKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for HandoffKey {
    type Error = InvalidValue;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        if value.starts_with("interaction:") || value.starts_with("ai:") {
            Ok(Self(value))
        } else {
            Err(invalid("handoff key", "it must start with interaction: or ai:"))
        }
    }
}

impl From<HandoffKey> for String {
    fn from(value: HandoffKey) -> Self {
        value.0
    }
}

/// How the case's contact was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContactResolution {
    /// Exactly one contact carries the sender's address.
    Matched,
    /// Several do; the deterministic rule picked one (see `HandoffRecord::ambiguity`).
    MatchedAmbiguous,
    /// None did; Mailroom created it from the sender.
    CreatedFromSender,
    /// An agent picked it in the screen pop.
    PickedByAgent,
    /// An agent created it in the screen pop.
    CreatedByAgent,
}

/// A contact offered in the screen pop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactCandidate {
    pub id: ContactId,
    pub name: String,
    /// 1, 2 or 3: which email column matched the sender.
    pub matched_on: u8,
}

impl From<&ContactMatch> for ContactCandidate {
    fn from(m: &ContactMatch) -> Self {
        Self { id: m.contact.id.clone(), name: m.contact.display_name(), matched_on: m.matched_on }
    }
}

/// Where a handoff stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HandoffStage {
    /// Recorded; the contact is not settled yet.
    Started,
    /// An agent must pick one of several contacts, or create the missing one, before the case can
    /// be created (Dataverse requires a customer on every case).
    AwaitingContact,
    /// The incident exists.
    Created,
}

/// What happened to one customer attachment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentOutcome {
    pub message: Fingerprint,
    pub index: usize,
    pub file_name: String,
    pub size: u64,
    /// Added as a note; otherwise too large for the org's upload limit (kept in Mailroom).
    pub added: bool,
}

/// Mailroom's record of one handoff: which incident it is, and which steps are done. Each step is
/// recorded once it succeeded, so a retry resumes where the last attempt stopped; the ids of
/// everything created in the CRM are deterministic, so a step that succeeded without being
/// recorded is found again instead of repeated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HandoffRecord {
    pub key: HandoffKey,
    pub incident_id: IncidentId,
    pub stage: HandoffStage,
    pub contact: Option<ContactId>,
    pub contact_resolution: Option<ContactResolution>,
    /// The contacts that matched the sender when the handoff looked (screen pop).
    #[serde(default)]
    pub candidates: Vec<ContactCandidate>,
    /// Set when several contacts matched and one was chosen by rule.
    pub ambiguity: Option<String>,
    pub ticket_number: Option<TicketNumber>,
    #[serde(default)]
    pub description_truncated: bool,
    #[serde(default)]
    pub transcript_note_added: bool,
    /// The Dynamics queue the case was added to.
    pub queued_in: Option<CrmQueueId>,
    /// Messages recorded on the case as email activities.
    #[serde(default)]
    pub appended: Vec<Fingerprint>,
    #[serde(default)]
    pub attachments: Vec<AttachmentOutcome>,
    /// For AI handoffs: a digest of the request, to refuse a reused key with other content.
    pub request_digest: Option<String>,
    /// The last failure, in words, until a later attempt succeeds.
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Optimistic concurrency: 0 before the first write.
    #[serde(default)]
    pub version: u64,
}

impl HandoffRecord {
    pub fn new(key: HandoffKey, incident_id: IncidentId, now: DateTime<Utc>) -> Self {
        Self {
            key,
            incident_id,
            stage: HandoffStage::Started,
            contact: None,
            contact_resolution: None,
            candidates: Vec::new(),
            ambiguity: None,
            ticket_number: None,
            description_truncated: false,
            transcript_note_added: false,
            queued_in: None,
            appended: Vec::new(),
            attachments: Vec::new(),
            request_digest: None,
            last_error: None,
            created_at: now,
            updated_at: now,
            version: 0,
        }
    }

    pub fn is_created(&self) -> bool {
        self.stage == HandoffStage::Created
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn email(s: &str) -> EmailAddress {
        EmailAddress::parse(s).unwrap()
    }

    #[test]
    fn guids_parse_and_derive_deterministically() {
        let id = ContactId::parse(" {7EB682F1-CA75-E511-80D4-00155D2A68D1} ").unwrap();
        assert_eq!(id.as_str(), "7eb682f1-ca75-e511-80d4-00155d2a68d1");
        assert!(ContactId::parse("7eb682f1ca75e51180d400155d2a68d1").is_err());
        assert!(ContactId::parse("7eb682f1-ca75-e511-80d4-00155d2a68dz").is_err());
        let i = InteractionId::parse("X7QS1J3FMJ7X").unwrap();
        let a = IncidentId::for_interaction(&i);
        assert_eq!(a, IncidentId::for_interaction(&i));
        assert_eq!(IncidentId::parse(a.as_str()).unwrap(), a);
        assert_eq!(&a.as_str()[14..15], "8", "version 8 (name-based, SHA-256)");
        assert_ne!(a, IncidentId::for_interaction(&InteractionId::parse("X7QS1J3FMJ7Y").unwrap()));
        assert_eq!(ContactId::for_sender(&email("A@x.org")), ContactId::for_sender(&email("a@x.org")));
    }

    fn sets() -> Vec<OptionSet> {
        let opt = |value, labels: &[&str]| OptionItem { value, labels: labels.iter().map(|s| s.to_string()).collect() };
        vec![
            OptionSet { column: "prioritycode".into(), options: vec![opt(1, &["High"]), opt(2, &["Normal"])] },
            OptionSet {
                column: "new_region".into(),
                options: vec![
                    opt(100000000, &["North America", "Amérique du Nord"]),
                    opt(100000001, &["Europe"]),
                    opt(100000002, &["Asia Pacific", "Asie-Pacifique"]),
                ],
            },
            OptionSet {
                column: "new_reason".into(),
                options: vec![opt(100000000, &["Other"]), opt(100000001, &["Refund"]), opt(100000002, &["other"])],
            },
        ]
    }

    fn input(pairs: &[(&str, TicketPropertyInput)]) -> BTreeMap<String, TicketPropertyInput> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    }

    #[test]
    fn ticket_properties_accept_values_and_unambiguous_labels() {
        use TicketPropertyInput::*;
        let ok = resolve_ticket_properties(
            &input(&[("new_region", Label("  asie-PACIFIQUE ".into())), ("new_reason", Value(100000001))]),
            &sets(),
        )
        .unwrap();
        assert_eq!(ok.get("new_region"), Some(100000002));
        assert_eq!(ok.get("new_reason"), Some(100000001));
        let ok = resolve_ticket_properties(&input(&[("new_region", Label("100000001".into()))]), &sets()).unwrap();
        assert_eq!(ok.get("new_region"), Some(100000001), "a number written as a string");
    }

    #[test]
    fn ticket_properties_report_every_problem_in_plain_words() {
        use TicketPropertyInput::*;
        let problems = resolve_ticket_properties(
            &input(&[
                ("new_region", Label("Eurpe".into())),
                ("new_reason", Label("OTHER".into())),
                ("new_colour", Value(1)),
                ("prioritycode", Value(1)),
                ("new_region2", Value(5)),
            ]),
            &sets(),
        )
        .unwrap_err();
        assert_eq!(problems.len(), 5, "{problems:?}");
        let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        assert!(
            text.iter().any(|t| t.contains("\"Eurpe\" is not a label of new_region") && t.contains("100000001 Europe")),
            "{text:?}"
        );
        assert!(text.iter().any(|t| t.contains("names several options (100000000, 100000002)")), "{text:?}");
        assert!(
            text.iter().any(|t| t.contains("no choice column \"new_colour\"") && t.contains("new_reason, new_region")),
            "{text:?}"
        );
        assert!(text.iter().any(|t| t.contains("set default_priority instead")), "{text:?}");
        let out_of_range =
            resolve_ticket_properties(&input(&[("new_region", Value(5))]), &sets()).unwrap_err().remove(0);
        assert!(matches!(out_of_range, PropertyProblem::ValueOutOfRange { value: 5, .. }));
        assert!(out_of_range.to_string().contains("accepted values: 100000000 North America"));
    }

    #[test]
    fn contacts_rank_email1_then_2_then_3_then_oldest() {
        let at = |d| Some(Utc.with_ymd_and_hms(2024, 1, d, 0, 0, 0).unwrap());
        let c = |id: &str, e: [Option<&str>; 3], created| ContactRecord {
            id: ContactId::parse(id).unwrap(),
            first_name: None,
            last_name: Some("X".into()),
            full_name: None,
            emails: e.map(|x| x.map(str::to_owned)),
            created_on: created,
        };
        let sender = email("ana@example.com");
        let found = vec![
            c("00000000-0000-0000-0000-000000000003", [None, None, Some("ANA@example.com ")], at(1)),
            c("00000000-0000-0000-0000-000000000002", [Some("x@y.z"), Some("ana@example.com"), None], at(1)),
            c("00000000-0000-0000-0000-000000000005", [Some("ana@example.com"), None, None], at(9)),
            c("00000000-0000-0000-0000-000000000004", [Some("ana@example.com"), None, None], at(2)),
            c("00000000-0000-0000-0000-000000000009", [Some("ana_x@example.com"), None, None], at(1)),
        ];
        let ranked: Vec<String> =
            rank_contacts(&sender, found).iter().map(|m| m.contact.id.as_str()[35..].to_owned()).collect();
        assert_eq!(ranked, vec!["4", "5", "2", "3"], "wildcard look-alike dropped, email1 first, then oldest");
    }

    #[test]
    fn names_split_sensibly() {
        let e = email("alice.moreau@example.org");
        let split = |n: Option<&str>| {
            let p = split_name(n, &e);
            (p.first.unwrap_or_default(), p.last)
        };
        assert_eq!(split(Some("Alice Moreau")), ("Alice".into(), "Moreau".into()));
        assert_eq!(split(Some("\"Moreau, Alice\"")), ("Alice".into(), "Moreau".into()));
        assert_eq!(split(Some("Alice Marie Moreau")), ("Alice Marie".into(), "Moreau".into()));
        assert_eq!(split(Some("Maria de la Cruz")), ("Maria".into(), "de la Cruz".into()));
        assert_eq!(split(Some("Ludwig van Beethoven")), ("Ludwig".into(), "van Beethoven".into()));
        assert_eq!(split(Some("John Smith Jr.")), ("John".into(), "Smith Jr.".into()));
        assert_eq!(split(Some("Renée   Dubois (via Support)")), ("Renée".into(), "Dubois".into()));
        assert_eq!(split(Some("Cher")), ("".into(), "Cher".into()));
        assert_eq!(split(Some("alice.moreau@example.org")), ("Alice".into(), "Moreau".into()));
        assert_eq!(split(None), ("Alice".into(), "Moreau".into()));
        let p = split_name(None, &email("jsmith+news@example.org"));
        assert_eq!((p.first, p.last.as_str()), (None, "jsmith"));
        let long = "A".repeat(80);
        assert_eq!(split_name(Some(&format!("Bob {long}")), &e).last.len(), 50);
    }

    fn entry(minute: u32, speaker: Speaker, text: &str) -> TranscriptEntry {
        TranscriptEntry {
            at: Utc.with_ymd_and_hms(2026, 11, 21, 7, minute, 0).unwrap(),
            speaker,
            author: "Alice Moreau <alice@example.org>".into(),
            subject: Some("Order 48213".into()),
            text: text.into(),
        }
    }

    fn header() -> CaseHeader {
        CaseHeader {
            channel: "email".into(),
            classification: "delivery".into(),
            sentiment: Some(Sentiment::Negative),
            summary: None,
        }
    }

    #[test]
    fn short_transcripts_go_whole_into_the_description() {
        let d = case_description(&header(), &[entry(2, Speaker::Customer, "It arrived broken.")], 2000);
        assert!(!d.truncated);
        assert_eq!(
            d.text,
            "Channel: email\nClassification: delivery\nSentiment: negative\n\nTranscript:\n\n\
             --- 2026-11-21 07:02 UTC | Alice Moreau <alice@example.org> (customer)\nSubject: Order 48213\nIt arrived broken."
        );
    }

    #[test]
    fn long_transcripts_are_cut_cleanly_with_a_marker() {
        let para = "The parcel was crushed on one side and the screen is cracked. ".repeat(12);
        let entries: Vec<_> = (0..6).map(|i| entry(i, Speaker::Customer, &para)).collect();
        let d = case_description(&header(), &entries, 2000);
        assert!(d.truncated);
        assert!(dataverse_len(&d.text) <= 2000, "{}", dataverse_len(&d.text));
        assert!(
            d.text.ends_with("The full transcript (6 messages) is in the note \"Full transcript\".]"),
            "{}",
            d.text
        );
        assert!(d.text.contains("…\n\n[Cut"), "the partial message ends with an ellipsis: {}", d.text);
        let before_marker = d.text.split("…\n\n[Cut").next().unwrap();
        assert!(!before_marker.ends_with(char::is_whitespace), "cut at a word boundary");
        assert!(before_marker.ends_with(|c: char| c.is_alphanumeric() || c == '.'), "{before_marker}");
        assert_eq!(d.full.matches("--- 2026").count(), 6);
        // Emoji count twice toward the limit, as .NET counts them.
        let emoji = "😀".repeat(1500);
        let d = case_description(&header(), &[entry(1, Speaker::Customer, &emoji)], 2000);
        assert!(d.truncated && dataverse_len(&d.text) <= 2000);
        assert!(d.text.chars().filter(|c| *c == '😀').count() < 1000);
    }

    #[test]
    fn quoted_history_is_dropped_from_replies() {
        let reply = "Thanks, that works.\n\n\nBest,\nAlice\n\nOn Mon, 2 Nov 2026 at 10:00, Support <s@x> wrote:\n> old text\n> more";
        assert_eq!(strip_quoted_reply(reply), "Thanks, that works.\n\nBest,\nAlice");
        assert_eq!(strip_quoted_reply("> a\nmine\n> b\nalso mine"), "mine\nalso mine");
    }

    #[test]
    fn titles_and_priorities() {
        let e = email("alice@example.org");
        assert_eq!(case_title("billing", Some("Alice Moreau"), &e), "billing - Alice Moreau");
        assert_eq!(case_title("billing", Some("  "), &e), "billing - alice@example.org");
        assert_eq!(case_title("x", Some(&"n".repeat(300)), &e).len(), 200);
        assert_eq!(prioritycode_for(Priority::new(9).unwrap()), 1);
        assert_eq!(prioritycode_for(Priority::new(5).unwrap()), 2);
        assert_eq!(prioritycode_for(Priority::new(1).unwrap()), 3);
    }
}
