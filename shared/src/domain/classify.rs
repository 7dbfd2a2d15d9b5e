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

/// What a keyword pattern counts towards.
#[derive(Debug, Clone, Copy)]
enum Signal {
    Category(usize),
    Positive,
    Negative,
}

/// The compiled rules: every keyword and sentiment word in one automaton, so each text is scanned
/// once. Built once per process.
pub struct RuleClassifier {
    default_category: Category,
    categories: Vec<Category>,
    matcher: AhoCorasick,
    /// For each pattern of `matcher`, everything it counts towards (a word can be both a category
    /// keyword and a sentiment word, e.g. "complaint").
    signals: Vec<Vec<Signal>>,
}

/// How much of the body the classifier reads: the opening of a message says what it is about,
/// and quoted history below it would only repeat earlier mail.
const CLASSIFY_BODY_CHARS: usize = 8 * 1024;

impl RuleClassifier {
    pub fn new(config: &ClassifierConfig) -> Self {
        let mut patterns: Vec<String> = Vec::new();
        let mut signals: Vec<Vec<Signal>> = Vec::new();
        let mut add = |word: &str, signal: Signal| {
            let word = word.to_lowercase();
            match patterns.iter().position(|p| *p == word) {
                Some(i) => signals[i].push(signal),
                None => {
                    patterns.push(word);
                    signals.push(vec![signal]);
                }
            }
        };
        let mut categories = Vec::new();
        for (i, rule) in config.categories.iter().enumerate() {
            categories.push(rule.name.clone());
            for kw in &rule.keywords {
                add(kw, Signal::Category(i));
            }
        }
        for w in &config.positive_words {
            add(w, Signal::Positive);
        }
        for w in &config.negative_words {
            add(w, Signal::Negative);
        }
        // Leftmost-longest: "not happy" is one negative match, not also a positive "happy".
        let matcher = AhoCorasickBuilder::new()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::LeftmostLongest)
            .build(&patterns)
            .expect("keyword patterns are plain strings");
        Self { default_category: config.default_category.clone(), categories, matcher, signals }
    }

    pub fn classify(&self, email: &ParsedEmail) -> Classification {
        let body = strip_quoted(head_of(&email.text_body, CLASSIFY_BODY_CHARS));
        let mut scores = vec![0u32; self.categories.len()];
        let mut positive = 0u32;
        let mut negative = 0u32;
        // The subject counts double: it is the customer's own summary.
        for (text, weight) in [(email.subject.as_str(), 2u32), (body.as_str(), 1u32)] {
            for m in self.matcher.find_iter(text) {
                if !on_word_boundary(text, m.start(), m.end()) {
                    continue;
                }
                for signal in &self.signals[m.pattern().as_usize()] {
                    match *signal {
                        Signal::Category(i) => scores[i] += weight,
                        Signal::Positive => positive += weight,
                        Signal::Negative => negative += weight,
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

        let r = c.classify(&email("Hello", "I am not happy with this."));
        assert_eq!(r.sentiment, Sentiment::Negative, "'not happy' is not also a positive 'happy'");

        let r = c.classify(&email("Complaint", "Nothing else."));
        assert_eq!((r.category.as_str(), r.sentiment), ("complaint", Sentiment::Negative), "one word, two roles");

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
