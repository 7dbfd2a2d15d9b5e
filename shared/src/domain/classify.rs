//! The built-in classifier: a category from keyword rules and a sentiment from a small lexicon.
//!
//! Both are configurable and deliberately simple and explainable; an external classifier can
//! replace it behind the `Classifier` port.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use serde::{Deserialize, Serialize};

use super::email::ParsedEmail;
use super::ids::Category;
use super::interaction::Sentiment;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CategoryRule {
    pub name: Category,
    /// Words or phrases, matched case-insensitively on word boundaries in the subject and body.
    pub keywords: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClassifierConfig {
    pub default_category: Category,
    pub categories: Vec<CategoryRule>,
    pub positive_words: Vec<String>,
    pub negative_words: Vec<String>,
}

fn words(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

impl Default for ClassifierConfig {
    fn default() -> Self {
        let cat =
            |name: &str, kw: &[&str]| CategoryRule { name: Category::parse(name).expect("valid"), keywords: words(kw) };
        Self {
            default_category: Category::parse("general").expect("valid"),
            categories: vec![
                cat(
                    "billing",
                    &[
                        "invoice",
                        "refund",
                        "payment",
                        "charged",
                        "charge",
                        "billing",
                        "bill",
                        "receipt",
                        "overcharged",
                        "credit card",
                        "subscription",
                    ],
                ),
                cat(
                    "complaint",
                    &["complaint", "unacceptable", "disappointed", "terrible service", "worst", "escalate"],
                ),
                cat(
                    "technical",
                    &[
                        "error",
                        "crash",
                        "bug",
                        "not working",
                        "doesn't work",
                        "does not work",
                        "password",
                        "login",
                        "log in",
                        "outage",
                    ],
                ),
                cat(
                    "delivery",
                    &["delivery", "shipping", "shipment", "tracking", "parcel", "package", "not arrived", "courier"],
                ),
                cat("cancellation", &["cancel", "cancellation", "terminate", "unsubscribe me", "close my account"]),
            ],
            positive_words: words(&[
                "thank you",
                "thanks",
                "great",
                "excellent",
                "appreciate",
                "happy",
                "love",
                "perfect",
                "wonderful",
                "helpful",
                "pleased",
                "awesome",
            ]),
            negative_words: words(&[
                "angry",
                "furious",
                "unacceptable",
                "terrible",
                "awful",
                "disappointed",
                "worst",
                "ridiculous",
                "complaint",
                "frustrated",
                "useless",
                "horrible",
                "never again",
                "scam",
                "not happy",
                "unhappy",
                "annoyed",
            ]),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    pub category: Category,
    pub sentiment: Sentiment,
}

/// The compiled rules. Built once per process; classification is a single pass per text.
pub struct RuleClassifier {
    default_category: Category,
    categories: Vec<Category>,
    category_matcher: AhoCorasick,
    /// For each pattern of `category_matcher`, the index of its category.
    category_of_pattern: Vec<usize>,
    sentiment_matcher: AhoCorasick,
    positive_patterns: usize,
}

/// How much of the body the classifier reads: the opening of a message says what it is about,
/// and quoted history below it would only repeat earlier mail.
const CLASSIFY_BODY_CHARS: usize = 8 * 1024;

impl RuleClassifier {
    pub fn new(config: &ClassifierConfig) -> Self {
        let mut patterns = Vec::new();
        let mut category_of_pattern = Vec::new();
        let mut categories = Vec::new();
        for (i, rule) in config.categories.iter().enumerate() {
            categories.push(rule.name.clone());
            for kw in &rule.keywords {
                patterns.push(kw.to_lowercase());
                category_of_pattern.push(i);
            }
        }
        let build = |p: &[String]| -> AhoCorasick {
            AhoCorasickBuilder::new()
                .ascii_case_insensitive(true)
                .match_kind(MatchKind::LeftmostLongest)
                .build(p)
                .expect("keyword patterns are plain strings")
        };
        let sentiment: Vec<String> =
            config.positive_words.iter().chain(config.negative_words.iter()).map(|w| w.to_lowercase()).collect();
        Self {
            default_category: config.default_category.clone(),
            categories,
            category_matcher: build(&patterns),
            category_of_pattern,
            sentiment_matcher: build(&sentiment),
            positive_patterns: config.positive_words.len(),
        }
    }

    pub fn classify(&self, email: &ParsedEmail) -> Classification {
        let body = head_of(&email.text_body, CLASSIFY_BODY_CHARS);
        let body = strip_quoted(body);
        let mut scores = vec![0u32; self.categories.len()];
        let mut positive = 0i32;
        let mut negative = 0i32;
        // The subject counts double: it is the customer's own summary.
        for (text, weight) in [(email.subject.as_str(), 2u32), (body.as_str(), 1u32)] {
            for m in self.category_matcher.find_iter(text) {
                if on_word_boundary(text, m.start(), m.end()) {
                    scores[self.category_of_pattern[m.pattern().as_usize()]] += weight;
                }
            }
            for m in self.sentiment_matcher.find_iter(text) {
                if on_word_boundary(text, m.start(), m.end()) {
                    if m.pattern().as_usize() < self.positive_patterns {
                        positive += weight as i32;
                    } else {
                        negative += weight as i32;
                    }
                }
            }
        }
        // The highest score wins; ties go to the rule listed first, so configuration order decides.
        let category = scores
            .iter()
            .enumerate()
            .filter(|(_, s)| **s > 0)
            .max_by(|(ia, a), (ib, b)| a.cmp(b).then(ib.cmp(ia)))
            .map(|(i, _)| self.categories[i].clone())
            .unwrap_or_else(|| self.default_category.clone());
        let sentiment = match positive.cmp(&negative) {
            std::cmp::Ordering::Greater => Sentiment::Positive,
            std::cmp::Ordering::Less => Sentiment::Negative,
            std::cmp::Ordering::Equal => Sentiment::Neutral,
        };
        Classification { category, sentiment }
    }
}

fn head_of(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Drops quoted lines (`> ...`) and everything after a reply header such as "On ... wrote:", so a
/// polite reply to an angry thread is not scored as angry.
fn strip_quoted(body: &str) -> String {
    let mut out = String::with_capacity(body.len());
    for line in body.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with('>') {
            continue;
        }
        if (trimmed.starts_with("On ") && trimmed.trim_end().ends_with("wrote:"))
            || trimmed.starts_with("-----Original Message-----")
        {
            break;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn on_word_boundary(text: &str, start: usize, end: usize) -> bool {
    let before = text[..start].chars().next_back();
    let after = text[end..].chars().next();
    !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn email(subject: &str, body: &str) -> ParsedEmail {
        ParsedEmail { subject: subject.into(), text_body: body.into(), has_headers: true, ..Default::default() }
    }

    #[test]
    fn categories_and_sentiment() {
        let c = RuleClassifier::new(&ClassifierConfig::default());
        let r = c.classify(&email("Question about my invoice", "I was charged twice, please refund."));
        assert_eq!(r.category.as_str(), "billing");
        assert_eq!(r.sentiment, Sentiment::Neutral);

        let r = c.classify(&email("Hello", "This is unacceptable, I am furious."));
        assert_eq!(r.sentiment, Sentiment::Negative);

        let r = c.classify(&email("Thanks!", "Thank you, that was very helpful."));
        assert_eq!(r.sentiment, Sentiment::Positive);
        assert_eq!(r.category.as_str(), "general");
    }

    #[test]
    fn words_match_whole_words_only() {
        let c = RuleClassifier::new(&ClassifierConfig::default());
        // "billboard" must not count as "bill".
        assert_eq!(c.classify(&email("billboard", "")).category.as_str(), "general");
    }

    #[test]
    fn quoted_history_does_not_count() {
        let c = RuleClassifier::new(&ClassifierConfig::default());
        let body = "Thanks, all good now.\n\nOn Mon, Alice wrote:\n> this is terrible and unacceptable\n";
        assert_eq!(c.classify(&email("Re: hi", body)).sentiment, Sentiment::Positive);
    }
}
