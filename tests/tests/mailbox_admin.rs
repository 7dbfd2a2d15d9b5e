//! Channel administration and config seeding on the embedded backend: errors that name the
//! field, write-only secrets, optimistic updates, changes that reach ingest without a restart,
//! and a config file that seeds the store without undoing an admin's later changes.

use mailroom::adapters::embedded::EmbeddedBackend;
use mailroom::app::embedded_mailboxes;
use mailroom::config::AppConfig;
use mailroom::domain::journal::{Disposition, Source};
use mailroom::domain::mailbox::SecretName;
use mailroom::usecases::channel_admin::{AdminError, AuthInput, ChannelInput, MailboxInput};
use mailroom::usecases::ingest::InboundEmail;
use secrecy::ExposeSecret;

const CONFIG: &str = r#"
[[channels]]
name = "support"
address = "support@example.com"
default_queue = "support"

[[channels]]
name = "sales"
address = "sales@example.com"
default_queue = "support"
[channels.mailbox]
protocol = "imaps"
host = "imap.example.com"
user = "sales@example.com"
after_fetch = "delete"
[channels.mailbox.auth]
type = "normal"
password = "s3cret-from-the-file"

[[queues]]
name = "support"
"#;

fn input(name: &str, password: Option<&str>, confirmation: Option<&str>) -> ChannelInput {
    ChannelInput {
        name: name.into(),
        address: format!("{name}@example.com"),
        enabled: true,
        default_queue: "support".into(),
        default_priority: None,
        script: Vec::new(),
        mailbox: Some(MailboxInput {
            protocol: "pop3s".into(),
            host: "pop.example.com".into(),
            port: None,
            user: format!("{name}@example.com"),
            auth: AuthInput::Normal {
                password: password.map(Into::into),
                password_confirmation: confirmation.map(Into::into),
            },
            after_fetch: Some("mark_seen".into()),
        }),
        outbound: None,
    }
}

fn field(e: AdminError) -> String {
    match e {
        AdminError::Invalid { field, .. } => field,
        other => panic!("expected a field error, got {other:?}"),
    }
}

#[tokio::test]
async fn the_config_seeds_the_store_and_admin_changes_survive_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let backend = EmbeddedBackend::open(dir.path()).unwrap();
    let config = AppConfig::parse(CONFIG, "test").unwrap();
    let app = embedded_mailboxes(&config, &backend).await.unwrap();

    let sales = app.admin.get("sales").await.unwrap();
    let mailbox = sales.mailbox.as_ref().unwrap();
    assert_eq!((mailbox.port, mailbox.port_is_default), (993, true));
    assert_eq!(format!("{:?}", mailbox.auth), "Normal { password_set: true }");
    let json = serde_json::to_string(&app.admin.list().await.unwrap()).unwrap();
    assert!(!json.contains("s3cret"), "no secret in any view: {json}");
    let stored = app.admin.store.get(&sales.name).await.unwrap().unwrap();
    assert!(!serde_json::to_string(&stored.channel).unwrap().contains("s3cret"), "only the secret's name is stored");
    let secret = app.admin.secrets.get(&SecretName::parse("channel/sales/password").unwrap()).await.unwrap().unwrap();
    assert_eq!(secret.expose_secret(), "s3cret-from-the-file");

    // An admin disables the channel; a restart with the same file keeps it disabled.
    app.admin.set_enabled("sales", false).await.unwrap();
    let again = embedded_mailboxes(&config, &backend).await.unwrap();
    assert!(!again.admin.get("sales").await.unwrap().enabled);
    // The file changes: its entry is applied again.
    let edited =
        AppConfig::parse(&CONFIG.replace("after_fetch = \"delete\"", "after_fetch = \"mark_seen\""), "test").unwrap();
    let third = embedded_mailboxes(&edited, &backend).await.unwrap();
    let sales = third.admin.get("sales").await.unwrap();
    assert!(sales.enabled, "the file's entry wins once it changes");
    assert_eq!(sales.mailbox.unwrap().after_fetch, mailroom::domain::mailbox::AfterFetch::MarkSeen);
    // A password changed only in the file is applied too.
    let new_password = AppConfig::parse(&CONFIG.replace("s3cret-from-the-file", "rotated"), "test").unwrap();
    let fourth = embedded_mailboxes(&new_password, &backend).await.unwrap();
    let secret =
        fourth.admin.secrets.get(&SecretName::parse("channel/sales/password").unwrap()).await.unwrap().unwrap();
    assert_eq!(secret.expose_secret(), "rotated");

    // Removed from the file: disabled, not forgotten; added back: applied again.
    let support_only = CONFIG.split("[[channels]]\nname = \"sales\"").next().unwrap().to_owned();
    let without_sales = AppConfig::parse(&(support_only + "[[queues]]\nname = \"support\"\n"), "t").unwrap();
    let fifth = embedded_mailboxes(&without_sales, &backend).await.unwrap();
    assert!(!fifth.admin.get("sales").await.unwrap().enabled);
    assert!(fifth.poller.poll_all().await.unwrap().is_empty(), "a disabled channel is not polled");
    let sixth = embedded_mailboxes(&new_password, &backend).await.unwrap();
    assert!(sixth.admin.get("sales").await.unwrap().enabled);
}

#[tokio::test]
async fn secret_values_from_the_environment_and_their_errors_name_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let backend = EmbeddedBackend::open(dir.path()).unwrap();
    let config = AppConfig::parse(
        &CONFIG.replace(
            "password = \"s3cret-from-the-file\"",
            "password = { env = \"MAILROOM_TEST_UNSET_PASSWORD_VAR\" }",
        ),
        "t",
    )
    .unwrap();
    let err = embedded_mailboxes(&config, &backend).await.err().expect("the variable is not set");
    let words = format!("{err:#}");
    assert!(
        words.contains("channels.sales.mailbox.auth.password") && words.contains("MAILROOM_TEST_UNSET_PASSWORD_VAR"),
        "{words}"
    );

    let bad =
        AppConfig::parse(&CONFIG.replace("protocol = \"imaps\"", "protocol = \"imaps\"\nport = 0"), "t").unwrap_err();
    assert!(bad.to_string().contains("channels.sales.mailbox.port"), "{bad}");
    let bad = AppConfig::parse(&CONFIG.replace("protocol = \"imaps\"", "protocol = \"smtp\""), "t").unwrap_err();
    assert!(format!("{bad:?}").contains("smtp"), "{bad:?}");
}

#[tokio::test]
async fn admin_errors_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let backend = EmbeddedBackend::open(dir.path()).unwrap();
    let app = embedded_mailboxes(&AppConfig::parse(CONFIG, "test").unwrap(), &backend).await.unwrap();
    let admin = &app.admin;

    assert_eq!(
        field(admin.create(input("web", Some("pw1"), Some("pw2"))).await.unwrap_err()),
        "mailbox.auth.password_confirmation"
    );
    assert_eq!(
        field(admin.create(input("web", Some("pw1"), None)).await.unwrap_err()),
        "mailbox.auth.password_confirmation"
    );
    assert_eq!(field(admin.create(input("web", None, None)).await.unwrap_err()), "mailbox.auth.password");
    assert_eq!(
        field(admin.create(input("web", Some("a\r\nb"), Some("a\r\nb"))).await.unwrap_err()),
        "mailbox.auth.password"
    );
    let mut i = input("web", Some("pw"), Some("pw"));
    i.default_queue = "nowhere".into();
    assert_eq!(field(admin.create(i).await.unwrap_err()), "default_queue");
    let mut i = input("web", Some("pw"), Some("pw"));
    i.address = "sales@example.com".into();
    assert_eq!(field(admin.create(i).await.unwrap_err()), "address");
    let mut i = input("web", Some("pw"), Some("pw"));
    i.mailbox.as_mut().unwrap().protocol = "smtp".into();
    assert_eq!(field(admin.create(i).await.unwrap_err()), "mailbox.protocol");
    let mut i = input("web", Some("pw"), Some("pw"));
    i.mailbox.as_mut().unwrap().host = "imap example.com".into();
    assert_eq!(field(admin.create(i).await.unwrap_err()), "mailbox.host");
    let mut i = input("web", Some("pw"), Some("pw"));
    i.mailbox.as_mut().unwrap().auth = AuthInput::Oauth2 {
        authority: Some("ftp://x".into()),
        tenant: "t".into(),
        client_id: "c".into(),
        client_secret: Some("s".into()),
    };
    assert_eq!(field(admin.create(i).await.unwrap_err()), "mailbox.auth.authority");
    let mut i = input("web", Some("pw"), Some("pw"));
    i.name = "no spaces".into();
    assert_eq!(field(admin.create(i).await.unwrap_err()), "name");
    let mut i = input("web", Some("pw"), Some("pw"));
    i.name = "test-connection".into();
    assert_eq!(field(admin.create(i).await.unwrap_err()), "name", "a fixed route's name is reserved");
    assert!(matches!(admin.create(input("sales", Some("pw"), Some("pw"))).await, Err(AdminError::Conflict(_))));
    assert!(matches!(admin.get("nobody").await, Err(AdminError::NotFound(_))));

    // JSON as the API receives it.
    let json: ChannelInput = serde_json::from_str(
        r#"{"name":"web","address":"web@example.com","default_queue":"support","mailbox":{"protocol":"imap+starttls",
            "host":"mail.example.com","port":1143,"user":"web","auth":{"type":"normal","password":"pw","password_confirmation":"pw"}}}"#,
    )
    .unwrap();
    assert!(!format!("{json:?}").contains("\"pw\""), "inputs never print secrets: {json:?}");
    let created = admin.create(json).await.unwrap();
    assert_eq!((created.version, created.mailbox.as_ref().unwrap().port), (1, 1143));
}

#[tokio::test]
async fn updates_keep_secrets_check_versions_and_reach_ingest_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let backend = EmbeddedBackend::open(dir.path()).unwrap();
    let app = embedded_mailboxes(&AppConfig::parse(CONFIG, "test").unwrap(), &backend).await.unwrap();
    let admin = &app.admin;
    let created = admin.create(input("web", Some("first"), Some("first"))).await.unwrap();

    // Without a password the stored one stays; with one, it is replaced.
    let mut change = input("web", None, None);
    change.mailbox.as_mut().unwrap().port = Some(1995);
    let updated = admin.update("web", change, Some(created.version)).await.unwrap();
    assert_eq!((updated.version, updated.mailbox.as_ref().unwrap().port), (2, 1995));
    let name = SecretName::parse("channel/web/password").unwrap();
    assert_eq!(admin.secrets.get(&name).await.unwrap().unwrap().expose_secret(), "first");
    admin.update("web", input("web", Some("second"), Some("second")), None).await.unwrap();
    assert_eq!(admin.secrets.get(&name).await.unwrap().unwrap().expose_secret(), "second");
    assert!(
        matches!(admin.update("web", input("web", None, None), Some(1)).await, Err(AdminError::Conflict(_))),
        "stale version"
    );
    assert_eq!(field(admin.update("web", input("other", None, None), None).await.unwrap_err()), "name");

    // Ingest sees a disabled channel at once (this process) and quarantines its mail.
    let raw =
        b"From: a@example.org\r\nTo: web@example.com\r\nSubject: hi\r\nMessage-ID: <x@example.org>\r\n\r\nhello\r\n"
            .to_vec();
    admin.set_enabled("web", false).await.unwrap();
    let out = app.ingest.ingest(InboundEmail::new(raw.clone(), Source::Smtp)).await.unwrap();
    assert_eq!(out.disposition(), Disposition::Quarantined);
    assert!(out.reason().contains("channel web is disabled"), "{}", out.reason());
}

#[tokio::test]
async fn the_outgoing_server_is_seeded_from_the_config_and_an_admins_choice_survives_restarts() {
    use mailroom::domain::outbound::OutgoingServer;
    use mailroom::usecases::channel_admin::{OutboundInput, ServerInput};

    let dir = tempfile::tempdir().unwrap();
    let backend = EmbeddedBackend::open(dir.path()).unwrap();
    let server = |app: &mailroom::app::EmbeddedMailboxes, name: &str| {
        let store = app.store.clone();
        let name = mailroom::domain::ids::ChannelName::parse(name).unwrap();
        async move { store.get(&name).await.unwrap().unwrap().channel.outbound }
    };

    // Started before channels carried their outgoing side (then it came from
    // [outbound.channels.<name>] at each start): an admin disabled `sales` meanwhile.
    let first = embedded_mailboxes(&AppConfig::parse(CONFIG, "t").unwrap(), &backend).await.unwrap();
    first.admin.set_enabled("sales", false).await.unwrap();
    assert_eq!(server(&first, "sales").await.server, OutgoingServer::Internal);
    // The same entries with an [outbound.channels.sales] section: its server is taken into the
    // store, and the admin's change stays.
    let older = format!(
        "{CONFIG}\n[outbound.channels.sales]\nagent_accounts = true\nserver = {{ kind = \"smtp\", host = \"smtp.example.com\", port = 587, security = \"starttls\" }}\n"
    );
    let second = embedded_mailboxes(&AppConfig::parse(&older, "t").unwrap(), &backend).await.unwrap();
    let sales = second.admin.get("sales").await.unwrap();
    assert!(!sales.enabled, "the admin's change is kept");
    assert!(matches!(server(&second, "sales").await.server, OutgoingServer::Smtp { .. }));
    assert!(server(&second, "sales").await.agent_accounts);

    // An admin picks the internal server through the API; restarts with the same file keep it.
    let internal = OutboundInput {
        server: ServerInput { kind: "internal".into(), host: None, port: None, security: None, login: None },
        agent_accounts: false,
    };
    second.admin.set_outbound("sales", internal, Some(sales.version)).await.unwrap();
    let third = embedded_mailboxes(&AppConfig::parse(&older, "t").unwrap(), &backend).await.unwrap();
    assert_eq!(server(&third, "sales").await.server, OutgoingServer::Internal, "survives a restart");
    // The file's entry changes (now as the channel's own outbound table): applied again.
    let own = CONFIG.replace(
        "[channels.mailbox]",
        "[channels.outbound]\nserver = { kind = \"smtp\", host = \"smtp.example.com\", port = 465, security = \"tls\" }\n[channels.mailbox]",
    );
    let fourth = embedded_mailboxes(&AppConfig::parse(&own, "t").unwrap(), &backend).await.unwrap();
    let OutgoingServer::Smtp { server: smtp, .. } = server(&fourth, "sales").await.server else {
        panic!("the file's entry wins once it changes")
    };
    assert_eq!(smtp.port, 465);
    assert_eq!(server(&fourth, "support").await.server, OutgoingServer::Internal, "other channels untouched");

    // Both ways at once, differently: start-up fails naming the channel's own setting.
    let both = format!("{own}\n[outbound.channels.sales]\nagent_accounts = true\n");
    let err = embedded_mailboxes(&AppConfig::parse(&both, "t").unwrap(), &backend).await.err().unwrap();
    assert!(format!("{err:#}").contains("channels.sales.outbound"), "{err:#}");
}
