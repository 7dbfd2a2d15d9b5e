//! Keeps automatic mail out of the agents' queues, and out of loops.
//!
//! The order of the checks matters: a bounce often also carries `Auto-Submitted`, and a list can
//! relay an out-of-office, so the most specific verdict wins.

use super::email::{ParsedEmail, ReturnPath};
use super::ids::EmailAddress;
use super::journal::Disposition;

/// A screening verdict: the disposition and the words recorded in the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub disposition: Disposition,
    pub reason: String,
}

fn verdict(disposition: Disposition, reason: impl Into<String>) -> Option<Verdict> {
    Some(Verdict { disposition, reason: reason.into() })
}

/// Returns the verdict for mail that must not reach an agent, or `None` for a person's email.
///
/// `own_addresses` are every channel address we receive on; mail from them is our own mail coming
/// back (field lessons: FreeScout #4143, 8,000 emails overnight).
pub fn screen(email: &ParsedEmail, own_addresses: &[EmailAddress]) -> Option<Verdict> {
    if let Some(v) = loop_verdict(email, own_addresses) {
        return Some(v);
    }
    if let Some(v) = virus_verdict(email) {
        return Some(v);
    }
    if let Some(v) = bounce_verdict(email) {
        return Some(v);
    }
    if let Some(v) = auto_reply_verdict(email) {
        return Some(v);
    }
    if daemon_return_path(email) {
        return verdict(Disposition::Bounce, "the envelope sender is the mail system (Return-Path: MAILER-DAEMON)");
    }
    if email.return_path == ReturnPath::Null {
        // RFC 5321 4.5.5: the null reverse-path is reserved for notifications that must not be
        // answered. Checked after the auto-reply headers because Exchange sends out-of-office
        // replies with a null return path as well.
        return verdict(Disposition::Bounce, "null return path (Return-Path: <>) marks an automatic notification");
    }
    if let Some(v) = spam_verdict(email) {
        return Some(v);
    }
    bulk_verdict(email)
}

fn loop_verdict(email: &ParsedEmail, own: &[EmailAddress]) -> Option<Verdict> {
    if let Some(from) = &email.from
        && own.contains(&from.address)
    {
        return verdict(Disposition::Loop, "sent from one of our own channel addresses");
    }
    if email.has_header("x-mailroom-origin") {
        return verdict(Disposition::Loop, "carries our own X-Mailroom-Origin header: it is mail we sent");
    }
    for value in email.header_values("x-loop") {
        let value = value.to_ascii_lowercase();
        if own.iter().any(|a| value.contains(a.as_str())) {
            return verdict(Disposition::Loop, "X-Loop names one of our channel addresses");
        }
    }
    None
}

fn virus_verdict(email: &ParsedEmail) -> Option<Verdict> {
    let v = email.header("x-ses-virus-verdict")?;
    v.eq_ignore_ascii_case("FAIL").then(|| Verdict {
        disposition: Disposition::Quarantined,
        reason: "Amazon SES virus scan verdict is FAIL".into(),
    })
}

/// Subject openings of non-delivery reports from MTAs that send no machine-readable DSN
/// (Exchange, GroupWise, qmail, SMTP32, Lotus, antivirus gateways). Compared case-insensitively;
/// a reply or forward ("Re: Undeliverable: ...") does not match, so a customer asking about a
/// bounce still reaches an agent.
const NDR_SUBJECTS: &[&str] = &[
    "undeliverable:",
    "undeliverable mail",
    "undelivered mail",
    "delivery status notification (failure)",
    "delivery status notification (delay)",
    "delivery status notification",
    "delivery report (failure)",
    "delivery failure",
    "delivery notification: delivery has failed",
    "mail delivery failed",
    "mail delivery failure",
    "mail delivery warning",
    "mail could not be delivered",
    "returned mail:",
    "returned mail - ",
    "failure notice",
    "non-delivery",
    "nondeliverable",
    "permanent delivery failure",
    "failed mail to",
    "warning: could not send message",
];

/// Local parts that MTAs send their reports from.
const DAEMON_SENDERS: &[&str] = &[
    "mailer-daemon",
    "mail-daemon",
    "mdaemon",
    "mail.delivery.system",
    "mail-delivery-system",
    "mail-delivery-subsystem",
];

fn bounce_verdict(email: &ParsedEmail) -> Option<Verdict> {
    if email.content_type == "multipart/report" {
        match email.report_type.as_deref() {
            Some("disposition-notification") => {
                return verdict(
                    Disposition::AutoReply,
                    "read receipt (multipart/report; report-type=disposition-notification)",
                );
            }
            Some("feedback-report") => {
                return verdict(
                    Disposition::Bounce,
                    "abuse feedback report (multipart/report; report-type=feedback-report)",
                );
            }
            Some(other) => {
                return verdict(
                    Disposition::Bounce,
                    format!("delivery report (multipart/report; report-type={other})"),
                );
            }
            None => return verdict(Disposition::Bounce, "delivery report (multipart/report)"),
        }
    }
    if email.has_delivery_status_part {
        return verdict(Disposition::Bounce, "carries a delivery status part (message/delivery-status)");
    }
    let subject = email.subject.trim_start().to_lowercase();
    let ndr_subject = NDR_SUBJECTS.iter().any(|p| subject.starts_with(p));
    if let Some(from) = &email.from {
        let local = from.address.local_part();
        if DAEMON_SENDERS.iter().any(|d| local.eq_ignore_ascii_case(d)) {
            return verdict(Disposition::Bounce, format!("sent by the mail system ({local})"));
        }
        if local.eq_ignore_ascii_case("postmaster") && (ndr_subject || email.return_path == ReturnPath::Null) {
            return verdict(Disposition::Bounce, "non-delivery report from postmaster");
        }
    }
    if ndr_subject {
        return verdict(Disposition::Bounce, "the subject is a mail system's non-delivery report");
    }
    None
}

/// `Return-Path: <MAILER-DAEMON@...>`: the envelope sender of mail-system notifications.
fn daemon_return_path(email: &ParsedEmail) -> bool {
    match &email.return_path {
        ReturnPath::Address(a) => {
            let local = a.rsplit_once('@').map_or(a.as_str(), |(l, _)| l);
            DAEMON_SENDERS.iter().any(|d| local.eq_ignore_ascii_case(d))
        }
        _ => false,
    }
}

fn auto_reply_verdict(email: &ParsedEmail) -> Option<Verdict> {
    if let Some(v) = email.header("auto-submitted") {
        let token = v.split(';').next().unwrap_or_default().trim();
        if !token.is_empty() && !token.eq_ignore_ascii_case("no") {
            return verdict(Disposition::AutoReply, format!("Auto-Submitted: {}", token.to_ascii_lowercase()));
        }
    }
    if let Some(v) = email.header("x-auto-response-suppress") {
        // Exchange stamps its automatic replies with `All` (or `OOF`/`AutoReply`), but Outlook also
        // puts `All` on some ordinary mail, which asks *others* not to auto-reply. Alone it would
        // lose real customers' email, so it counts only with a second sign of automation.
        let lower = v.to_ascii_lowercase();
        let suppresses = lower.split([',', ' ']).any(|t| matches!(t.trim(), "all" | "oof" | "autoreply"));
        let corroborated = email.return_path == ReturnPath::Null
            || email.has_header("x-ms-exchange-inbox-rules-loop")
            || email.has_header("x-ms-exchange-generated-message-source");
        if suppresses && corroborated {
            return verdict(
                Disposition::AutoReply,
                format!("X-Auto-Response-Suppress: {v} on a message generated by Exchange"),
            );
        }
    }
    if email.header("x-autoreply").is_some_and(|v| !v.eq_ignore_ascii_case("no")) {
        return verdict(Disposition::AutoReply, "X-Autoreply header");
    }
    if email.has_header("x-autorespond") || email.has_header("x-autoresponder") {
        return verdict(Disposition::AutoReply, "X-Autorespond header");
    }
    if email.header("precedence").is_some_and(|v| v.eq_ignore_ascii_case("auto_reply")) {
        return verdict(Disposition::AutoReply, "Precedence: auto_reply");
    }
    None
}

fn spam_verdict(email: &ParsedEmail) -> Option<Verdict> {
    if email.header("x-spam-flag").is_some_and(|v| v.trim().eq_ignore_ascii_case("yes")) {
        return verdict(Disposition::Spam, "flagged upstream (X-Spam-Flag: YES)");
    }
    if email.header("x-ses-spam-verdict").is_some_and(|v| v.trim().eq_ignore_ascii_case("fail")) {
        return verdict(Disposition::Spam, "Amazon SES spam verdict is FAIL");
    }
    None
}

fn bulk_verdict(email: &ParsedEmail) -> Option<Verdict> {
    if let Some(list) = email.header("list-id") {
        let shown: String = list.chars().take(120).collect();
        return verdict(Disposition::Bulk, format!("mailing list mail (List-Id: {shown})"));
    }
    if let Some(p) = email.header("precedence") {
        let p = p.trim().to_ascii_lowercase();
        if matches!(p.as_str(), "bulk" | "list" | "junk") {
            return verdict(Disposition::Bulk, format!("Precedence: {p}"));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::email::Mailbox;

    fn email_from(addr: &str) -> ParsedEmail {
        ParsedEmail {
            has_headers: true,
            from: Some(Mailbox { address: EmailAddress::parse(addr).unwrap(), name: None }),
            content_type: "text/plain".into(),
            ..Default::default()
        }
    }

    fn with_header(mut e: ParsedEmail, name: &str, value: &str) -> ParsedEmail {
        e.screening_headers.push((name.into(), value.into()));
        e
    }

    fn own() -> Vec<EmailAddress> {
        vec![EmailAddress::parse("support@example.com").unwrap()]
    }

    fn disposition(e: &ParsedEmail) -> Option<Disposition> {
        screen(e, &own()).map(|v| v.disposition)
    }

    #[test]
    fn a_person_passes() {
        assert_eq!(disposition(&email_from("alice@example.org")), None);
        let e = with_header(email_from("alice@example.org"), "auto-submitted", "no");
        assert_eq!(disposition(&e), None);
    }

    #[test]
    fn auto_replies_of_every_kind() {
        let base = || email_from("alice@example.org");
        for (name, value) in [
            ("auto-submitted", "auto-replied"),
            ("auto-submitted", "auto-generated; owner-email=\"x@y\""),
            ("x-autoreply", "yes"),
            ("x-autorespond", "vacation"),
            ("precedence", "auto_reply"),
        ] {
            assert_eq!(disposition(&with_header(base(), name, value)), Some(Disposition::AutoReply), "{name}: {value}");
        }
        // Outlook marks ordinary mail with suppression requests: alone, that is not an auto-reply.
        assert_eq!(disposition(&with_header(base(), "x-auto-response-suppress", "DR, RN, NRN")), None);
        assert_eq!(disposition(&with_header(base(), "x-auto-response-suppress", "All")), None);
        let exchange = with_header(base(), "x-ms-exchange-inbox-rules-loop", "alice@example.org");
        assert_eq!(
            disposition(&with_header(exchange, "x-auto-response-suppress", "OOF")),
            Some(Disposition::AutoReply)
        );
    }

    #[test]
    fn bounces_and_reports() {
        let mut dsn = email_from("postmaster@example.net");
        dsn.content_type = "multipart/report".into();
        dsn.report_type = Some("delivery-status".into());
        assert_eq!(disposition(&dsn), Some(Disposition::Bounce));

        assert_eq!(disposition(&email_from("MAILER-DAEMON@mx.example.net")), Some(Disposition::Bounce));

        let mut no_type = email_from("postmaster@example.net");
        no_type.content_type = "multipart/report".into();
        assert_eq!(disposition(&no_type), Some(Disposition::Bounce));

        let mut wrapped = email_from("gateway@example.net");
        wrapped.has_delivery_status_part = true;
        assert_eq!(disposition(&wrapped), Some(Disposition::Bounce));

        let mut ndr = email_from("postmaster@example.net");
        ndr.subject = "Undeliverable: RE: your order".into();
        assert_eq!(disposition(&ndr), Some(Disposition::Bounce));
        ndr.subject = "Re: Undeliverable: RE: your order".into();
        assert_eq!(disposition(&ndr), None, "a person asking about a bounce reaches an agent");

        let mut daemon_rp = email_from("notices@example.net");
        daemon_rp.return_path = ReturnPath::Address("MAILER-DAEMON@mx.example.net".into());
        assert_eq!(disposition(&daemon_rp), Some(Disposition::Bounce));

        let mut null = email_from("notify@example.net");
        null.return_path = ReturnPath::Null;
        assert_eq!(disposition(&null), Some(Disposition::Bounce));
        // Exchange out-of-office: null return path and Auto-Submitted.
        let oof = with_header(null, "auto-submitted", "auto-generated");
        assert_eq!(disposition(&oof), Some(Disposition::AutoReply));

        let mut mdn = email_from("alice@example.org");
        mdn.content_type = "multipart/report".into();
        mdn.report_type = Some("disposition-notification".into());
        assert_eq!(disposition(&mdn), Some(Disposition::AutoReply));
    }

    #[test]
    fn bulk_spam_loop_and_virus() {
        let base = || email_from("news@example.net");
        assert_eq!(disposition(&with_header(base(), "list-id", "<users.lists.example.net>")), Some(Disposition::Bulk));
        for p in ["bulk", "list", "junk", "Bulk"] {
            assert_eq!(disposition(&with_header(base(), "precedence", p)), Some(Disposition::Bulk));
        }
        assert_eq!(disposition(&with_header(base(), "x-spam-flag", "YES")), Some(Disposition::Spam));
        assert_eq!(disposition(&with_header(base(), "x-ses-spam-verdict", "FAIL")), Some(Disposition::Spam));
        assert_eq!(disposition(&with_header(base(), "x-ses-spam-verdict", "PASS")), None);
        assert_eq!(disposition(&with_header(base(), "x-ses-virus-verdict", "FAIL")), Some(Disposition::Quarantined));
        assert_eq!(disposition(&email_from("Support@Example.com")), Some(Disposition::Loop));
    }

    #[test]
    fn a_bounce_wins_over_auto_submitted() {
        let mut dsn = with_header(email_from("mailer-daemon@example.net"), "auto-submitted", "auto-replied");
        dsn.content_type = "multipart/report".into();
        dsn.report_type = Some("delivery-status".into());
        assert_eq!(disposition(&dsn), Some(Disposition::Bounce));
    }
}
