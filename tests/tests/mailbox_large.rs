//! A mailbox of 1,000 messages over IMAP and over POP3, taken in bounded runs that resume
//! where the last one stopped.

use std::time::Instant;

use mailroom::domain::mailbox::{AfterFetch, MailProtocol};
use mailroom::usecases::poll_mailbox::PollOutcome;
use mailroom_tests::dovecot::{Mailroom, dovecot, message};

const MESSAGES: usize = 1_000;

#[tokio::test]
async fn a_thousand_messages_over_imap_and_pop3() {
    let Some(d) = dovecot() else { return };
    for (protocol, after_fetch) in
        [(MailProtocol::Imaps, AfterFetch::MarkSeen), (MailProtocol::Pop3s, AfterFetch::Delete)]
    {
        let user = d.add_user("big");
        d.deliver(&user, (0..MESSAGES).map(|n| message(&user.name, n)));
        let mut config = d.config(vec![("support", d.mailbox(protocol, &user, after_fetch))]);
        config.mailbox.max_messages_per_run = 400;
        let mailroom = Mailroom::start(config).await;
        let channel = mailroom.config.channels[0].name.clone();

        let started = Instant::now();
        let mut runs = Vec::new();
        loop {
            let r = mailroom.app.poller.poll_channel(&channel).await.unwrap();
            assert!(matches!(r.outcome, PollOutcome::Done), "{protocol}: {:?}", r.outcome);
            assert!(r.counts.fetched <= 400, "{protocol}: a run is bounded");
            runs.push(r.counts.ingested);
            if !r.counts.more_waiting {
                break;
            }
        }
        let took = started.elapsed();
        assert_eq!(runs, [400, 400, 200], "{protocol}: three bounded runs, each resuming");
        mailroom.assert_ingested_once(MESSAGES).await;
        let status = d.status(&user);
        match after_fetch {
            AfterFetch::MarkSeen => assert_eq!((status.messages, status.unseen), (MESSAGES as u32, 0)),
            AfterFetch::Delete => assert_eq!(status.messages, 0),
        }
        println!(
            "{protocol}: {MESSAGES} messages in {took:?} ({:.0}/s, debug build)",
            MESSAGES as f64 / took.as_secs_f64()
        );
    }
}
