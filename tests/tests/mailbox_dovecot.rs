//! Polling a real dovecot (`infra/dovecot.sh`) over every protocol and sign-in, end to end on
//! the embedded backend: what was ingested, what is left on the server, and that nothing was
//! taken twice.

use mailroom::domain::journal::{Disposition, Source};
use mailroom::domain::mailbox::{AfterFetch, HealthStatus, MailProtocol, NetworkPolicy};
use mailroom::usecases::channel_admin::{AuthInput, ConnectionTestRequest, MailboxInput};
use mailroom::usecases::poll_mailbox::{MailboxAccess, PollOutcome};
use mailroom_tests::dovecot::{Dovecot, Mailroom, TestUser, dovecot, message};

fn name(protocol: MailProtocol) -> &'static str {
    match protocol {
        MailProtocol::Imap => "imap-plain",
        MailProtocol::ImapStarttls => "imap-starttls",
        MailProtocol::Imaps => "imaps",
        MailProtocol::Pop3 => "pop3-plain",
        MailProtocol::Pop3Stls => "pop3-stls",
        MailProtocol::Pop3s => "pop3s",
    }
}

/// Three messages in, one poll, then the server state and the journal; a second poll takes
/// nothing, new mail is taken alone.
async fn round_trip(d: &Dovecot, protocol: MailProtocol, after_fetch: AfterFetch, user: TestUser, mailroom: Mailroom) {
    let channel = mailroom.config.channels[0].name.clone();
    d.deliver(&user, (0..3).map(|n| message(&user.name, n)));
    let report = mailroom.app.poller.poll_channel(&channel).await.expect("poll");
    assert!(matches!(report.outcome, PollOutcome::Done), "{protocol}: {:?}", report.outcome);
    assert_eq!((report.counts.fetched, report.counts.ingested), (3, 3), "{protocol}");
    let journal = mailroom.assert_ingested_once(3).await;
    assert!(journal.iter().all(|e| e.channel.as_ref() == Some(&channel)));
    assert!(journal.iter().all(|e| matches!(&e.source, Source::Mailbox { protocol: p, .. } if p == protocol.as_str())));
    let status = d.status(&user);
    match after_fetch {
        AfterFetch::MarkSeen => {
            assert_eq!((status.messages, status.unseen), (3, 0), "{protocol}: left on the server, seen")
        }
        AfterFetch::Delete => assert_eq!(status.messages, 0, "{protocol}: deleted from the server"),
    }

    let again = mailroom.app.poller.poll_channel(&channel).await.expect("poll");
    assert_eq!((again.counts.fetched, again.counts.ingested), (0, 0), "{protocol}: nothing new");
    d.deliver(&user, [message(&user.name, 3)]);
    let more = mailroom.app.poller.poll_channel(&channel).await.expect("poll");
    assert_eq!((more.counts.fetched, more.counts.ingested), (1, 1), "{protocol}");
    mailroom.assert_ingested_once(4).await;
    let health = mailroom.app.poller.state.health(&channel).await.unwrap().unwrap();
    assert_eq!(health.status(), HealthStatus::Healthy);
    assert_eq!(health.last_run.ingested, 1);
}

#[tokio::test]
async fn every_protocol_with_a_password() {
    let Some(d) = dovecot() else { return };
    for (protocol, after_fetch) in [
        (MailProtocol::Imap, AfterFetch::MarkSeen),
        (MailProtocol::ImapStarttls, AfterFetch::Delete),
        (MailProtocol::Imaps, AfterFetch::MarkSeen),
        (MailProtocol::Imaps, AfterFetch::Delete),
        (MailProtocol::Pop3, AfterFetch::Delete),
        (MailProtocol::Pop3Stls, AfterFetch::MarkSeen),
        (MailProtocol::Pop3s, AfterFetch::Delete),
        (MailProtocol::Pop3s, AfterFetch::MarkSeen),
    ] {
        let user = d.add_user("pw");
        let mailroom = Mailroom::start(d.config(vec![(name(protocol), d.mailbox(protocol, &user, after_fetch))])).await;
        round_trip(&d, protocol, after_fetch, user, mailroom).await;
    }
}

#[tokio::test]
async fn xoauth2_on_imap_and_pop3() {
    let Some(d) = dovecot() else { return };
    for (protocol, after_fetch) in [
        (MailProtocol::Imaps, AfterFetch::MarkSeen),
        (MailProtocol::ImapStarttls, AfterFetch::Delete),
        (MailProtocol::Pop3s, AfterFetch::Delete),
        (MailProtocol::Pop3Stls, AfterFetch::MarkSeen),
    ] {
        let (user, app) = d.add_oauth_user("oa").await;
        let mailroom =
            Mailroom::start(d.config(vec![(name(protocol), d.oauth_mailbox(protocol, &user, app, after_fetch))])).await;
        round_trip(&d, protocol, after_fetch, user, mailroom).await;
    }
}

#[tokio::test]
async fn a_wrong_password_is_recorded_in_plain_words_and_touches_nothing() {
    let Some(d) = dovecot() else { return };
    for protocol in [MailProtocol::Imaps, MailProtocol::Pop3s] {
        let user = d.add_user("wrong");
        d.deliver(&user, (0..2).map(|n| message(&user.name, n)));
        let mut mailbox = d.mailbox(protocol, &user, AfterFetch::Delete);
        mailbox.auth = mailroom::domain::mailbox::MailboxAuth::Normal {
            password: mailroom::domain::mailbox::SecretRef::Inline("not-the-password".to_owned().into()),
        };
        let mailroom = Mailroom::start(d.config(vec![("support", mailbox)])).await;
        let channel = mailroom.config.channels[0].name.clone();
        for attempt in 1..=2 {
            let report = mailroom.app.poller.poll_channel(&channel).await.expect("poll");
            assert!(report.failed(), "{protocol}");
            let health = mailroom.app.poller.state.health(&channel).await.unwrap().unwrap();
            assert_eq!((health.status(), health.consecutive_failures), (HealthStatus::Failing, attempt));
            let words = health.last_error.unwrap();
            assert!(words.contains("the server refused the sign-in"), "{protocol}: {words}");
            assert!(!words.contains("not-the-password"), "the password never shows: {words}");
        }
        assert!(mailroom.journal().await.is_empty());
        assert_eq!(d.status(&user).messages, 2, "{protocol}: nothing deleted");
    }
}

#[tokio::test]
async fn one_failing_mailbox_does_not_stop_the_others() {
    let Some(d) = dovecot() else { return };
    let good = d.add_user("good");
    let bad = d.add_user("bad");
    d.deliver(&good, (0..2).map(|n| message(&good.name, n)));
    let mut broken = d.mailbox(MailProtocol::Pop3s, &bad, AfterFetch::MarkSeen);
    broken.port = Some(1); // nothing listens there
    let mailroom = Mailroom::start(
        d.config(vec![("broken", broken), ("good", d.mailbox(MailProtocol::Imaps, &good, AfterFetch::MarkSeen))]),
    )
    .await;
    let reports = mailroom.app.poller.poll_all().await.expect("poll all");
    assert_eq!(reports.len(), 2);
    for r in &reports {
        match r.channel.as_str() {
            "good" => assert!(matches!(r.outcome, PollOutcome::Done), "{:?}", r.outcome),
            _ => assert!(r.failed()),
        }
    }
    mailroom.assert_ingested_once(2).await;
    let health = mailroom.app.admin.get("broken").await.unwrap().health.unwrap();
    assert_eq!(health.status, HealthStatus::Failing);
    assert!(health.health.last_error.unwrap().contains("could not connect to localhost port 1"));
}

fn input(d: &Dovecot, protocol: MailProtocol, user: &TestUser, password: &str) -> MailboxInput {
    MailboxInput {
        protocol: protocol.as_str().to_owned(),
        host: d.host.clone(),
        port: Some(d.port(protocol)),
        user: user.name.clone(),
        auth: AuthInput::Normal { password: Some(password.into()), password_confirmation: None },
        after_fetch: None,
    }
}

#[tokio::test]
async fn test_connection_reports_each_step_in_plain_words() {
    let Some(d) = dovecot() else { return };
    let user = d.add_user("tc");
    d.deliver(&user, (0..4).map(|n| message(&user.name, n)));
    let mut config = d.config(vec![("support", d.mailbox(MailProtocol::Imaps, &user, AfterFetch::MarkSeen))]);
    // One case below waits for a greeting that never comes.
    config.mailbox.command_timeout_secs = 2;
    let mailroom = Mailroom::start(config).await;
    let admin = &mailroom.app.admin;

    // The stored channel's settings.
    let ok =
        admin.test_connection(ConnectionTestRequest { channel: Some("support".into()), mailbox: None }).await.unwrap();
    assert!(ok.ok, "{ok:?}");
    assert!(ok.summary.contains("opened INBOX: 4 messages"), "{}", ok.summary);
    let steps: Vec<&str> = ok.steps.iter().map(|s| s.step).collect();
    assert_eq!(steps, ["resolve", "connect", "sign_in", "open_mailbox"]);
    assert!(ok.steps[1].detail.contains("encrypted with TLSv1."), "{}", ok.steps[1].detail);

    // Unsaved settings: POP3 over STLS, then a wrong password.
    let pop = admin
        .test_connection(ConnectionTestRequest {
            channel: None,
            mailbox: Some(input(&d, MailProtocol::Pop3Stls, &user, &user.password)),
        })
        .await
        .unwrap();
    assert!(pop.ok && pop.summary.contains("the mailbox holds 4 messages"), "{pop:?}");
    let plain = admin
        .test_connection(ConnectionTestRequest {
            channel: None,
            mailbox: Some(input(&d, MailProtocol::Imap, &user, &user.password)),
        })
        .await
        .unwrap();
    assert!(plain.ok && plain.steps[1].detail.contains("NOT encrypted"), "{plain:?}");
    let wrong = admin
        .test_connection(ConnectionTestRequest {
            channel: None,
            mailbox: Some(input(&d, MailProtocol::Imaps, &user, "nope")),
        })
        .await
        .unwrap();
    assert!(!wrong.ok);
    let steps: Vec<_> = wrong.steps.iter().map(|s| (s.step, s.ok)).collect();
    assert_eq!(steps, [("resolve", true), ("connect", true), ("sign_in", false)], "{wrong:?}");
    assert!(wrong.summary.contains("the server refused the sign-in"), "{}", wrong.summary);

    // STARTTLS demanded on the implicit-TLS port: a TLS server does not speak plain IMAP first.
    let mut mismatched = input(&d, MailProtocol::ImapStarttls, &user, &user.password);
    mismatched.port = Some(d.imaps_port);
    let bad = admin.test_connection(ConnectionTestRequest { channel: None, mailbox: Some(mismatched) }).await.unwrap();
    assert!(!bad.ok, "{bad:?}");
    assert!(bad.summary.contains("did not answer in time (reading the greeting)"), "{}", bad.summary);

    // The connection test changed nothing on the server.
    assert_eq!(d.status(&user).unseen, 4);
}

#[tokio::test]
async fn the_cloud_policy_refuses_loopback_and_metadata_addresses() {
    let Some(d) = dovecot() else { return };
    let user = d.add_user("ssrf");
    let mailroom =
        Mailroom::start(d.config(vec![("support", d.mailbox(MailProtocol::Imaps, &user, AfterFetch::MarkSeen))])).await;
    let local = &mailroom.app.admin.access;
    let cloud = std::sync::Arc::new(MailboxAccess::new(
        local.secrets.clone(),
        local.connector.clone(),
        local.resolver.clone(),
        local.tokens.clone(),
        NetworkPolicy::CLOUD,
    ));
    let admin = mailroom::usecases::channel_admin::ChannelAdmin {
        store: mailroom.app.admin.store.clone(),
        secrets: mailroom.app.admin.secrets.clone(),
        state: mailroom.app.admin.state.clone(),
        directory: mailroom.app.admin.directory.clone(),
        access: cloud,
        queues: mailroom.app.admin.queues.clone(),
        clock: mailroom.app.admin.clock.clone(),
    };
    for (host, expected) in [
        (d.host.as_str(), "loopback"),
        ("127.0.0.1", "loopback"),
        ("169.254.169.254", "link-local"),
        ("10.1.2.3", "mailbox.allow_private_networks"),
        ("[::ffff:169.254.169.254]", "link-local"),
    ] {
        let mut m = input(&d, MailProtocol::Imaps, &user, &user.password);
        m.host = host.to_owned();
        let r = admin.test_connection(ConnectionTestRequest { channel: None, mailbox: Some(m) }).await.unwrap();
        assert!(!r.ok, "{host}");
        assert_eq!(r.steps.last().unwrap().step, "resolve", "{host}: refused before connecting");
        assert!(r.summary.contains(expected), "{host}: {}", r.summary);
    }
    // An OAuth2 authority other than Microsoft's is refused in the cloud.
    let mut m = input(&d, MailProtocol::Imaps, &user, &user.password);
    m.host = "imap.example.com".into();
    m.auth = AuthInput::Oauth2 {
        authority: Some(d.identity_url.clone()),
        tenant: "t".into(),
        client_id: "c".into(),
        client_secret: Some("s".into()),
    };
    let r = admin.test_connection(ConnectionTestRequest { channel: None, mailbox: Some(m) }).await.unwrap();
    assert!(!r.ok && r.summary.contains("authority is not allowed"), "{}", r.summary);
}

#[tokio::test]
async fn a_disabled_channel_is_not_polled() {
    let Some(d) = dovecot() else { return };
    let user = d.add_user("off");
    d.deliver(&user, [message(&user.name, 0)]);
    let mailroom =
        Mailroom::start(d.config(vec![("support", d.mailbox(MailProtocol::Imaps, &user, AfterFetch::MarkSeen))])).await;
    mailroom.app.admin.set_enabled("support", false).await.unwrap();
    assert!(mailroom.app.poller.poll_all().await.unwrap().is_empty());
    assert_eq!(d.status(&user).unseen, 1);
    mailroom.app.admin.set_enabled("support", true).await.unwrap();
    let reports = mailroom.app.poller.poll_all().await.unwrap();
    assert_eq!(reports[0].counts.ingested, 1);
    let journal = mailroom.assert_ingested_once(1).await;
    assert_eq!(journal[0].disposition, Some(Disposition::New));
}
