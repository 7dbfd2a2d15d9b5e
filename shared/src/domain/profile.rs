//! An agent's own settings: workplace address, SMTP user id, date format, signatures, the default
//! From, the interaction sound. The SMTP password is not here: it is a write-only secret kept
//! apart, and the profile only says whether one is set.

use std::collections::HashSet;
use std::fmt;
use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::ids::{AgentId, EmailAddress, InvalidValue};
use super::outbound::{HeaderText, SendAs, SmtpLogin};

fn invalid(kind: &'static str, reason: &'static str) -> InvalidValue {
    InvalidValue { kind, reason }
}

/// How dates are written in outgoing mail (`On 03/01/2026 10:14, … wrote:`) and transcripts:
/// a strftime pattern of a safe subset (date, time, names; no padding tricks).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DateFormat(String);

/// The strftime specifiers allowed in a date format.
const DATE_SPECIFIERS: &[char] = &['Y', 'y', 'm', 'd', 'e', 'b', 'B', 'a', 'A', 'H', 'I', 'M', 'S', 'p', 'Z', 'z', 'j'];

impl DateFormat {
    /// ISO 8601 style, the default: `2026-03-01 10:14 UTC`.
    pub const DEFAULT: &'static str = "%Y-%m-%d %H:%M %Z";

    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        const KIND: &str = "date format";
        let pattern = match raw.trim() {
            "iso" => Self::DEFAULT,
            "european" => "%d/%m/%Y %H:%M",
            "us" => "%m/%d/%Y %I:%M %p",
            "long" => "%A %e %B %Y, %H:%M",
            other => other,
        };
        if pattern.is_empty() || pattern.len() > 64 {
            return Err(invalid(KIND, "it must be 1 to 64 characters"));
        }
        if pattern.chars().any(|c| c.is_control()) {
            return Err(invalid(KIND, "it contains control characters"));
        }
        let mut chars = pattern.chars();
        while let Some(c) = chars.next() {
            if c == '%' {
                match chars.next() {
                    Some(s) if DATE_SPECIFIERS.contains(&s) || s == '%' => {}
                    _ => {
                        return Err(invalid(
                            KIND,
                            "it uses a specifier other than %Y %y %m %d %e %b %B %a %A %H %I %M %S %p %Z %z %j",
                        ));
                    }
                }
            }
        }
        Ok(Self(pattern.to_owned()))
    }

    pub fn format(&self, t: DateTime<Utc>) -> String {
        // Validated above, so formatting cannot fail.
        t.format(&self.0).to_string()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for DateFormat {
    fn default() -> Self {
        Self(Self::DEFAULT.to_owned())
    }
}

impl TryFrom<String> for DateFormat {
    type Error = InvalidValue;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<DateFormat> for String {
    fn from(value: DateFormat) -> Self {
        value.0
    }
}

/// HTML that went through the signature allow-list: no scripts, no event handlers, no styles
/// (CSS can fetch), no forms; images only from `cid:` or inline `data:image/…`, so no remote
/// image can report that a mail was opened; links only `https`, `mailto` and `tel`, with known
/// tracking parameters removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub struct SanitizedHtml(String);

/// Query parameters that exist to track who clicked.
const TRACKING_PARAMS: &[&str] = &[
    "fbclid",
    "gclid",
    "dclid",
    "msclkid",
    "mc_cid",
    "mc_eid",
    "_hsenc",
    "_hsmi",
    "mkt_tok",
    "yclid",
    "igshid",
    "oly_enc_id",
    "oly_anon_id",
    "vero_id",
    "wickedid",
    "trk",
    "trkcampaign",
];

static SANITIZER: LazyLock<ammonia::Builder<'static>> = LazyLock::new(|| {
    let mut b = ammonia::Builder::empty();
    b.add_tags([
        "a",
        "b",
        "strong",
        "i",
        "em",
        "u",
        "s",
        "small",
        "sub",
        "sup",
        "br",
        "p",
        "div",
        "span",
        "hr",
        "ul",
        "ol",
        "li",
        "table",
        "thead",
        "tbody",
        "tr",
        "td",
        "th",
        "img",
        "blockquote",
        "h1",
        "h2",
        "h3",
        "h4",
        "font",
        "center",
    ])
    .add_tag_attributes("a", ["href", "title"])
    .add_tag_attributes("img", ["src", "alt", "width", "height", "title"])
    .add_tag_attributes("td", ["colspan", "rowspan", "align", "valign", "width"])
    .add_tag_attributes("th", ["colspan", "rowspan", "align", "valign", "width"])
    .add_tag_attributes("table", ["cellpadding", "cellspacing", "border", "width"])
    .add_tag_attributes("font", ["color", "size", "face"])
    .add_generic_attributes(["align", "dir"])
    .url_schemes(HashSet::from(["https", "mailto", "tel", "cid", "data"]))
    .url_relative(ammonia::UrlRelative::Deny)
    .link_rel(Some("noopener noreferrer"))
    .strip_comments(true)
    .attribute_filter(|element, attribute, value| {
        let lower = value.trim().to_ascii_lowercase();
        match (element, attribute) {
            ("img", "src") => {
                let inline = lower.starts_with("cid:")
                    || ["data:image/png", "data:image/jpeg", "data:image/gif", "data:image/webp"]
                        .iter()
                        .any(|p| lower.starts_with(p));
                inline.then(|| value.into())
            }
            ("a", "href") => {
                if lower.starts_with("data:") || lower.starts_with("cid:") {
                    None
                } else {
                    Some(strip_tracking(value).into())
                }
            }
            _ => Some(value.into()),
        }
    });
    b
});

/// Removes tracking parameters (`utm_*` and [`TRACKING_PARAMS`]) from a link's query.
fn strip_tracking(url: &str) -> String {
    let Some((base, rest)) = url.split_once('?') else { return url.to_owned() };
    let (query, fragment) = match rest.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (rest, None),
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let name = pair.split('=').next().unwrap_or_default().to_ascii_lowercase();
            !name.is_empty() && !name.starts_with("utm_") && !TRACKING_PARAMS.contains(&name.as_str())
        })
        .collect();
    let mut out = base.to_owned();
    if !kept.is_empty() {
        out.push('?');
        out.push_str(&kept.join("&"));
    }
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

impl SanitizedHtml {
    /// The longest signature kept (after sanitizing): inline images make signatures large, but
    /// every message carries it.
    pub const MAX_LEN: usize = 64 * 1024;

    pub fn sanitize(html: &str) -> Result<Self, InvalidValue> {
        let clean = SANITIZER.clean(html).to_string();
        if clean.len() > Self::MAX_LEN {
            return Err(invalid("signature", "it is longer than 64 KB after sanitizing"));
        }
        Ok(Self(clean))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A plain-text rendering for the text part: tags dropped, block ends as line breaks, the
    /// entities ammonia writes decoded.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let mut rest = self.0.as_str();
        while let Some(start) = rest.find('<') {
            out.push_str(&rest[..start]);
            let Some(end) = rest[start..].find('>') else {
                rest = "";
                break;
            };
            let tag = rest[start + 1..start + end].trim_start_matches('/').to_ascii_lowercase();
            let name = tag.split(|c: char| c.is_whitespace() || c == '/').next().unwrap_or_default();
            if matches!(name, "br" | "p" | "div" | "tr" | "li" | "h1" | "h2" | "h3" | "h4" | "hr" | "table")
                && !out.ends_with('\n')
                && !out.is_empty()
            {
                out.push('\n');
            }
            rest = &rest[start + end + 1..];
        }
        out.push_str(rest);
        let decoded = out
            .replace("&nbsp;", " ")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&#39;", "'")
            .replace("&amp;", "&");
        decoded.lines().map(str::trim_end).collect::<Vec<_>>().join("\n").trim().to_owned()
    }
}

impl From<String> for SanitizedHtml {
    /// Stored signatures are sanitized again when read: a record written by an older, looser
    /// allow-list cannot bring anything past the current one.
    fn from(value: String) -> Self {
        Self(SANITIZER.clean(&value).to_string())
    }
}

impl From<SanitizedHtml> for String {
    fn from(value: SanitizedHtml) -> Self {
        value.0
    }
}

/// A signature's name, e.g. `default` or `formal`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SignatureName(String);

impl SignatureName {
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let name = raw.trim();
        if name.is_empty() || name.len() > 64 || name.chars().any(|c| c.is_control()) {
            return Err(invalid("signature name", "it must be 1 to 64 characters without control characters"));
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for SignatureName {
    type Error = InvalidValue;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<SignatureName> for String {
    fn from(value: SignatureName) -> Self {
        value.0
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    pub name: SignatureName,
    pub html: SanitizedHtml,
}

/// The sound the agent desktop plays when an interaction is offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum InteractionSound {
    None,
    #[default]
    Chime,
    Bell,
    Ding,
    Marimba,
}

impl InteractionSound {
    pub const ALL: [InteractionSound; 5] = [Self::None, Self::Chime, Self::Bell, Self::Ding, Self::Marimba];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Chime => "chime",
            Self::Bell => "bell",
            Self::Ding => "ding",
            Self::Marimba => "marimba",
        }
    }

    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str() == raw.trim())
            .ok_or(invalid("interaction sound", "it must be one of none, chime, bell, ding, marimba"))
    }
}

impl fmt::Display for InteractionSound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An agent's profile. Created with defaults on first read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentProfile {
    pub agent_id: AgentId,
    /// Their workplace address: the From when they send as themselves, and where test emails go.
    pub workplace_email: Option<EmailAddress>,
    /// The name shown with their address.
    #[serde(default)]
    pub display_name: Option<HeaderText>,
    /// Their user id on the custom SMTP server (the password is a separate, write-only secret).
    #[serde(default)]
    pub smtp_login: Option<SmtpLogin>,
    #[serde(default)]
    pub date_format: DateFormat,
    #[serde(default)]
    pub signatures: Vec<Signature>,
    #[serde(default)]
    pub default_signature: Option<SignatureName>,
    #[serde(default)]
    pub default_send_as: SendAs,
    #[serde(default)]
    pub interaction_sound: InteractionSound,
    pub updated_at: DateTime<Utc>,
}

impl AgentProfile {
    /// Most signatures an agent may keep.
    pub const MAX_SIGNATURES: usize = 20;

    pub fn new(agent_id: AgentId, workplace_email: Option<EmailAddress>, now: DateTime<Utc>) -> Self {
        Self {
            agent_id,
            workplace_email,
            display_name: None,
            smtp_login: None,
            date_format: DateFormat::default(),
            signatures: Vec::new(),
            default_signature: None,
            default_send_as: SendAs::Channel,
            interaction_sound: InteractionSound::default(),
            updated_at: now,
        }
    }

    pub fn signature(&self, name: &SignatureName) -> Option<&Signature> {
        self.signatures.iter().find(|s| &s.name == name)
    }

    pub fn default_signature(&self) -> Option<&Signature> {
        self.default_signature.as_ref().and_then(|n| self.signature(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_lose_scripts_handlers_and_remote_images() {
        let dirty = r#"<p onclick="steal()">Ana Lima<br><b>Support</b></p>
<script>alert(1)</script><img src="https://tracker.example.net/pixel.gif?u=1" width="1">
<img src="data:image/png;base64,iVBORw0KGgo=" alt="logo"><img src="cid:logo@mailroom">
<a href="javascript:alert(1)">x</a><a href="https://example.com/?utm_source=mail&amp;id=7&amp;fbclid=abc" onmouseover="x()">site</a>
<div style="background:url(https://tracker.example.net/bg.gif)">styled</div><iframe src="https://evil"></iframe>
<form action="https://evil"><input name="p"></form>"#;
        let clean = SanitizedHtml::sanitize(dirty).unwrap();
        let html = clean.as_str();
        for banned in [
            "script",
            "onclick",
            "onmouseover",
            "tracker",
            "javascript",
            "style=",
            "iframe",
            "<form",
            "<input",
            "utm_",
            "fbclid",
        ] {
            assert!(!html.contains(banned), "{banned} left in {html}");
        }
        assert!(html.contains("data:image/png;base64"), "{html}");
        assert!(html.contains("cid:logo@mailroom"), "{html}");
        assert!(html.contains("https://example.com/?id=7"), "{html}");
        assert!(html.contains("rel=\"noopener noreferrer\""), "{html}");
        let text = clean.to_text();
        assert!(text.starts_with("Ana Lima\nSupport"), "{text:?}");
    }

    #[test]
    fn date_formats_are_checked() {
        let t = DateTime::parse_from_rfc3339("2026-03-01T10:14:00Z").unwrap().with_timezone(&Utc);
        assert_eq!(DateFormat::default().format(t), "2026-03-01 10:14 UTC");
        assert_eq!(DateFormat::parse("european").unwrap().format(t), "01/03/2026 10:14");
        assert_eq!(DateFormat::parse("%d.%m.%Y").unwrap().format(t), "01.03.2026");
        for bad in ["%Q", "%", "%-d", "", "a\nb"] {
            assert!(DateFormat::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sounds_parse() {
        assert_eq!(InteractionSound::parse("bell").unwrap(), InteractionSound::Bell);
        assert!(InteractionSound::parse("siren").is_err());
    }
}
