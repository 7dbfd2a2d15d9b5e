//! The channel's email script: ordered routing rules that pick the queue and priority.
//!
//! The first rule whose conditions all hold decides; with none, the channel's default queue and
//! priority apply. Within one condition, a list means "any of".

use regex::Regex;
use serde::{Deserialize, Serialize};

use super::email::ParsedEmail;
use super::ids::{Category, EmailAddress, QueueName};
use super::interaction::Priority;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RuleConditions {
    /// Sender address contains any of these (case-insensitive), e.g. `"@vip.example.com"`.
    pub from_contains: Vec<String>,
    /// Sender domain equals any of these.
    pub from_domain: Vec<String>,
    /// Any recipient (To, Cc, envelope) equals any of these addresses.
    pub to: Vec<String>,
    pub subject_contains: Vec<String>,
    /// A regular expression on the subject (Rust `regex` syntax).
    pub subject_matches: Option<String>,
    pub body_contains: Vec<String>,
    pub category: Vec<Category>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RoutingRule {
    pub name: String,
    #[serde(default)]
    pub when: RuleConditions,
    pub queue: Option<QueueName>,
    pub priority: Option<Priority>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutingDecision {
    pub queue: QueueName,
    pub priority: Priority,
    /// The rule that decided, or `None` for the channel default.
    pub rule: Option<String>,
}

/// What the script sees of an email.
pub struct ScriptInput<'a> {
    pub email: &'a ParsedEmail,
    pub sender: &'a EmailAddress,
    pub recipients: &'a [EmailAddress],
    pub category: &'a Category,
}

/// A compiled script: regular expressions are compiled once, when configuration is loaded.
#[derive(Debug, Clone)]
pub struct EmailScript {
    rules: Vec<(RoutingRule, Option<Regex>)>,
}

#[derive(Debug, thiserror::Error)]
#[error("routing rule {rule:?}: subject_matches is not a valid regular expression")]
pub struct ScriptError {
    pub rule: String,
    #[source]
    pub source: regex::Error,
}

impl EmailScript {
    pub fn compile(rules: &[RoutingRule]) -> Result<Self, ScriptError> {
        let rules = rules
            .iter()
            .map(|r| {
                let re = r
                    .when
                    .subject_matches
                    .as_deref()
                    .map(|p| regex::RegexBuilder::new(p).case_insensitive(true).build())
                    .transpose()
                    .map_err(|source| ScriptError { rule: r.name.clone(), source })?;
                Ok((r.clone(), re))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { rules })
    }

    pub fn decide(
        &self,
        input: &ScriptInput<'_>,
        default_queue: &QueueName,
        default_priority: Priority,
    ) -> RoutingDecision {
        for (rule, re) in &self.rules {
            if matches(&rule.when, re.as_ref(), input) {
                return RoutingDecision {
                    queue: rule.queue.clone().unwrap_or_else(|| default_queue.clone()),
                    priority: rule.priority.unwrap_or(default_priority),
                    rule: Some(rule.name.clone()),
                };
            }
        }
        RoutingDecision { queue: default_queue.clone(), priority: default_priority, rule: None }
    }

    pub fn queues(&self) -> impl Iterator<Item = &QueueName> {
        self.rules.iter().filter_map(|(r, _)| r.queue.as_ref())
    }
}

fn contains_any(haystack: &str, needles: &[String]) -> bool {
    let haystack = haystack.to_lowercase();
    needles.iter().any(|n| haystack.contains(&n.to_lowercase()))
}

fn matches(c: &RuleConditions, subject_re: Option<&Regex>, input: &ScriptInput<'_>) -> bool {
    let sender = input.sender.as_str();
    (c.from_contains.is_empty() || contains_any(sender, &c.from_contains))
        && (c.from_domain.is_empty() || c.from_domain.iter().any(|d| d.eq_ignore_ascii_case(input.sender.domain())))
        && (c.to.is_empty()
            || c.to.iter().any(|t| input.recipients.iter().any(|r| r.as_str().eq_ignore_ascii_case(t.trim()))))
        && (c.subject_contains.is_empty() || contains_any(&input.email.subject, &c.subject_contains))
        && subject_re.is_none_or(|re| re.is_match(&input.email.subject))
        && (c.body_contains.is_empty() || contains_any(&input.email.text_body, &c.body_contains))
        && (c.category.is_empty() || c.category.contains(input.category))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> QueueName {
        QueueName::parse(s).unwrap()
    }

    #[test]
    fn first_matching_rule_wins_and_default_applies() {
        let rules: Vec<RoutingRule> = toml::from_str::<std::collections::HashMap<String, Vec<RoutingRule>>>(
            r#"
            rules = [
              { name = "vip", when = { from_domain = ["vip.example.com"] }, queue = "vip", priority = 9 },
              { name = "billing", when = { category = ["billing"] }, queue = "billing" },
              { name = "urgent", when = { subject_matches = "\\burgent\\b" }, priority = 8 },
            ]"#,
        )
        .unwrap()
        .remove("rules")
        .unwrap();
        let script = EmailScript::compile(&rules).unwrap();
        let email = ParsedEmail { subject: "URGENT: help".into(), ..Default::default() };
        let general = Category::parse("general").unwrap();
        let billing = Category::parse("billing").unwrap();
        let alice = EmailAddress::parse("alice@example.org").unwrap();
        let boss = EmailAddress::parse("boss@vip.example.com").unwrap();
        let run = |sender: &EmailAddress, category: &Category| {
            script.decide(
                &ScriptInput { email: &email, sender, recipients: &[], category },
                &q("support"),
                Priority::NORMAL,
            )
        };
        assert_eq!(run(&boss, &billing).queue, q("vip"));
        assert_eq!(run(&boss, &billing).priority.value(), 9);
        assert_eq!(run(&alice, &billing).queue, q("billing"));
        let urgent = run(&alice, &general);
        assert_eq!((urgent.queue, urgent.priority.value(), urgent.rule.as_deref()), (q("support"), 8, Some("urgent")));
        let plain = ParsedEmail::default();
        let d = script.decide(
            &ScriptInput { email: &plain, sender: &alice, recipients: &[], category: &general },
            &q("support"),
            Priority::NORMAL,
        );
        assert_eq!((d.queue, d.rule), (q("support"), None));
    }

    #[test]
    fn a_bad_regex_names_the_rule() {
        let rule = RoutingRule {
            name: "broken".into(),
            when: RuleConditions { subject_matches: Some("(".into()), ..Default::default() },
            queue: None,
            priority: None,
        };
        let err = EmailScript::compile(&[rule]).unwrap_err();
        assert!(err.to_string().contains("broken"));
    }
}
