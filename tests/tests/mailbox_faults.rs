//! Faults against the real dovecot: a connection cut in the middle of a run, a kicked IDLE
//! connection, a UIDVALIDITY reset, an expired token and a token refresh that fails. Each
//! checks what was ingested, what is left on the server, and that nothing was taken twice.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use mailroom::adapters::mailbox::ClientCredentialsTokenSources;
use mailroom::domain::mailbox::{AfterFetch, HealthStatus, MailProtocol, OAuth2Client, SecretRef};
use mailroom::ports::SystemClock;
use mailroom::ports::identity::{AccessToken, AccessTokenSource, TokenError};
use mailroom::ports::mailbox::TokenSources;
use mailroom::usecases::poll_mailbox::{MailboxAccess, MailboxPoller, PollOutcome, run_idle_loop};
use mailroom_tests::dovecot::{CuttingProxy, Mailroom, dovecot, eventually, message};
use secrecy::{ExposeSecret, SecretString};

#[tokio::test]
async fn a_connection_cut_mid_run_loses_nothing_and_duplicates_nothing() {
    let Some(d) = dovecot() else { return };
    for protocol in [MailProtocol::Imaps, MailProtocol::Pop3s] {
        for (cut_after, after_fetch) in
            [(2_500, AfterFetch::MarkSeen), (9_000, AfterFetch::Delete), (20_000, AfterFetch::MarkSeen)]
        {
            let user = d.add_user("cut");
            d.deliver(&user, (0..60).map(|n| message(&user.name, n)));
            let proxy = CuttingProxy::start(d.port(protocol), cut_after).await;
            let mut mailbox = d.mailbox(protocol, &user, after_fetch);
            mailbox.port = Some(proxy.port);
            let mailroom = Mailroom::start(d.config(vec![("support", mailbox)])).await;
            let channel = mailroom.config.channels[0].name.clone();

            let first = mailroom.app.poller.poll_channel(&channel).await.unwrap();
            assert!(first.failed(), "{protocol} cut at {cut_after}: {:?}", first.outcome);
            let health = mailroom.app.poller.state.health(&channel).await.unwrap().unwrap();
            assert_eq!(health.status(), HealthStatus::Failing);
            let taken_before = mailroom.journal().await.len();

            // Mailroom restarts on the same data (as after a crash) and polls again.
            let restarted = mailroom.restart().await;
            let second = restarted.poller.poll_channel(&channel).await.unwrap();
            assert!(matches!(second.outcome, PollOutcome::Done), "{protocol} cut at {cut_after}: {:?}", second.outcome);
            assert_eq!(
                second.counts.ingested as usize,
                60 - taken_before,
                "{protocol} cut at {cut_after}: the rest is taken"
            );
            mailroom.assert_ingested_once(60).await;
            let status = d.status(&user);
            match after_fetch {
                AfterFetch::MarkSeen => {
                    assert_eq!((status.messages, status.unseen), (60, 0), "{protocol} cut at {cut_after}")
                }
                AfterFetch::Delete => assert_eq!(status.messages, 0, "{protocol} cut at {cut_after}"),
            }
            let health = restarted.poller.state.health(&channel).await.unwrap().unwrap();
            assert_eq!(health.status(), HealthStatus::Healthy);
        }
    }
}

#[tokio::test]
async fn a_uidvalidity_reset_is_resynchronized_without_duplicates() {
    let Some(d) = dovecot() else { return };
    let user = d.add_user("uidv");
    d.deliver(&user, (0..5).map(|n| message(&user.name, n)));
    let mailroom =
        Mailroom::start(d.config(vec![("support", d.mailbox(MailProtocol::Imaps, &user, AfterFetch::MarkSeen))])).await;
    let channel = mailroom.config.channels[0].name.clone();
    assert_eq!(mailroom.app.poller.poll_channel(&channel).await.unwrap().counts.ingested, 5);

    let before = d.status(&user).uid_validity;
    let after = d.reset_uid_validity(&user);
    assert_ne!(before, after);
    d.deliver(&user, [message(&user.name, 5)]);
    let r = mailroom.app.poller.poll_channel(&channel).await.unwrap();
    assert!(matches!(r.outcome, PollOutcome::Done), "{:?}", r.outcome);
    assert_eq!((r.counts.fetched, r.counts.ingested, r.counts.repeats), (6, 1, 5), "everything again, one new");
    mailroom.assert_ingested_once(6).await;
    assert_eq!(d.status(&user).unseen, 0);
    let r = mailroom.app.poller.poll_channel(&channel).await.unwrap();
    assert_eq!(r.counts.fetched, 0, "the new UIDVALIDITY is the cursor's now");
}

#[tokio::test]
async fn idle_picks_up_mail_within_two_seconds_and_survives_a_kick() {
    let Some(d) = dovecot() else { return };
    let user = d.add_user("idle");
    let mailroom =
        Mailroom::start(d.config(vec![("support", d.mailbox(MailProtocol::Imaps, &user, AfterFetch::MarkSeen))])).await;
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(run_idle_loop(mailroom.app.poller.clone(), stop_rx));
    tokio::time::sleep(Duration::from_millis(500)).await;

    for n in 0..3 {
        let started = std::time::Instant::now();
        d.save(&user, &message(&user.name, n));
        let arrived = eventually(Duration::from_secs(5), async || mailroom.journal().await.len() == n + 1).await;
        let took = started.elapsed();
        assert!(arrived, "message {n} was not ingested within 5 s");
        assert!(took < Duration::from_secs(2), "message {n}: arrival to queued took {took:?}");
        if n == 1 {
            // The server drops the IDLE connection: the loop reconnects by itself.
            d.kick(&user);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(15), task).await.expect("the loop stops on shutdown").unwrap();
    mailroom.assert_ingested_once(3).await;
    assert_eq!(d.status(&user).unseen, 0);
}

/// Tokens from the real authority, but the first one handed out is an expired token.
struct ExpiredFirst {
    expired: Mutex<Option<AccessToken>>,
    real: ClientCredentialsTokenSources,
}

struct ExpiredFirstSource {
    expired: Mutex<Option<AccessToken>>,
    inner: Arc<dyn AccessTokenSource>,
}

impl TokenSources for ExpiredFirst {
    fn source(&self, client: &OAuth2Client, secret: SecretString) -> Arc<dyn AccessTokenSource> {
        Arc::new(ExpiredFirstSource {
            expired: Mutex::new(self.expired.lock().unwrap().take()),
            inner: self.real.source(client, secret),
        })
    }
}

#[async_trait]
impl AccessTokenSource for ExpiredFirstSource {
    async fn access_token(&self) -> Result<AccessToken, TokenError> {
        let expired = self.expired.lock().unwrap().take();
        match expired {
            Some(t) => Ok(t),
            None => self.inner.access_token().await,
        }
    }
    fn invalidate(&self) {
        self.inner.invalidate();
    }
}

#[tokio::test]
async fn an_expired_token_is_refused_by_the_server_and_replaced() {
    let Some(d) = dovecot() else { return };
    for protocol in [MailProtocol::Imaps, MailProtocol::Pop3s] {
        let (user, app) = d.add_oauth_user("exp").await;
        d.deliver(&user, (0..2).map(|n| message(&user.name, n)));
        // A token that lives one second, used after it died.
        d.identity(
            "next-lifetime",
            serde_json::json!({"tenant": app.tenant, "client_id": app.client_id, "seconds": 1}),
        )
        .await;
        let SecretRef::Inline(secret) = &app.client_secret else { unreachable!() };
        let expired =
            ClientCredentialsTokenSources::default().source(&app, secret.clone()).access_token().await.unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;

        let mailroom = Mailroom::start(
            d.config(vec![("support", d.oauth_mailbox(protocol, &user, app.clone(), AfterFetch::Delete))]),
        )
        .await;
        let p = &mailroom.app.poller;
        let access = Arc::new(MailboxAccess::new(
            p.access.secrets.clone(),
            p.access.connector.clone(),
            p.access.resolver.clone(),
            Arc::new(ExpiredFirst {
                expired: Mutex::new(Some(expired.clone())),
                real: ClientCredentialsTokenSources::default(),
            }),
            p.access.policy,
        ));
        let poller = MailboxPoller::new(
            p.ingest.clone(),
            p.channels.clone(),
            p.state.clone(),
            access,
            p.limits,
            Arc::new(SystemClock),
        );
        let before = d.identity("stats", serde_json::json!({})).await["token_requests"].as_u64().unwrap();
        let r = poller.poll_channel(&mailroom.config.channels[0].name).await.unwrap();
        assert!(matches!(r.outcome, PollOutcome::Done), "{protocol}: {:?}", r.outcome);
        let after = d.identity("stats", serde_json::json!({})).await["token_requests"].as_u64().unwrap();
        assert!(after > before, "{protocol}: a new token was asked for after the server refused the expired one");
        assert!(!expired.expose().is_empty());
        mailroom.assert_ingested_once(2).await;
        assert_eq!(d.status(&user).messages, 0);
    }
}

#[tokio::test]
async fn a_failed_token_refresh_marks_the_channel_unhealthy_at_once() {
    let Some(d) = dovecot() else { return };
    let (user, app) = d.add_oauth_user("refresh").await;
    d.deliver(&user, [message(&user.name, 0)]);
    // The first token lives 2 seconds: the next run must renew it.
    d.identity("next-lifetime", serde_json::json!({"tenant": app.tenant, "client_id": app.client_id, "seconds": 2}))
        .await;
    let mailroom = Mailroom::start(
        d.config(vec![("support", d.oauth_mailbox(MailProtocol::Imaps, &user, app.clone(), AfterFetch::MarkSeen))]),
    )
    .await;
    let channel = mailroom.config.channels[0].name.clone();
    let r = mailroom.app.poller.poll_channel(&channel).await.unwrap();
    assert!(matches!(r.outcome, PollOutcome::Done), "{:?}", r.outcome);

    // The app's secret expires at the authority.
    d.identity("disable", serde_json::json!({"tenant": app.tenant, "client_id": app.client_id})).await;
    d.deliver(&user, [message(&user.name, 1)]);
    let r = mailroom.app.poller.poll_channel(&channel).await.unwrap();
    assert!(r.failed());
    let health = mailroom.app.poller.state.health(&channel).await.unwrap().unwrap();
    assert_eq!(
        (health.status(), health.consecutive_failures),
        (HealthStatus::Failing, 1),
        "unhealthy on the first failure"
    );
    let words = health.last_error.unwrap();
    assert!(words.contains("Microsoft sign-in failed") && words.contains("AADSTS7000222"), "{words}");
    let SecretRef::Inline(secret) = &app.client_secret else { unreachable!() };
    assert!(!words.contains(secret.expose_secret()), "the secret never shows");
    assert_eq!(d.status(&user).unseen, 1, "the new message waits on the server");

    // Fixed at the authority: the next run takes the waiting mail.
    d.identity("disable", serde_json::json!({"tenant": app.tenant, "client_id": app.client_id, "disabled": false}))
        .await;
    let r = mailroom.app.poller.poll_channel(&channel).await.unwrap();
    assert_eq!(r.counts.ingested, 1, "{:?}", r.outcome);
    mailroom.assert_ingested_once(2).await;
}
