//! The one conformance suite of [`Store`]: the same cases run over SQLite and over a real
//! PostgreSQL (tests/integration/store_conformance.rs). A case gets a [`StoreFactory`] whose
//! every `open` is another handle (another connection or pool, as another process would
//! have) on the same empty database.
//!
//! Public, not `cfg(test)`, so that the integration tests can run it; it is small and only
//! calls the [`Store`] trait.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::auth_tokens::{Lifetimes, OidcLogin, RefreshCheck, Rotation};
use super::projects::ProjectDb;
use super::store::{Caller, Store, StoreError};
use crate::projects::ProjectError;
use crate::projects::records::ProjectRecords;

/// Opens handles on one database, empty before the case's first `open`.
#[async_trait::async_trait]
pub trait StoreFactory: Send + Sync {
    async fn open(&self) -> Result<Arc<dyn Store>, StoreError>;
}

pub type CaseResult = Result<(), StoreError>;
pub type Case =
    for<'a> fn(&'a dyn StoreFactory) -> Pin<Box<dyn Future<Output = CaseResult> + Send + 'a>>;

/// Every case, by name.
pub const CASES: &[(&str, Case)] = &[
    ("issued_tokens_authenticate_as_their_user", |f| {
        Box::pin(issued_tokens_authenticate_as_their_user(f))
    }),
    ("right_id_with_wrong_secret_is_refused", |f| {
        Box::pin(right_id_with_wrong_secret_is_refused(f))
    }),
    ("malformed_tokens_are_refused", |f| {
        Box::pin(malformed_tokens_are_refused(f))
    }),
    ("revoked_tokens_no_longer_authenticate", |f| {
        Box::pin(revoked_tokens_no_longer_authenticate(f))
    }),
    ("a_token_without_the_flag_keeps_the_users_admin_flag", |f| {
        Box::pin(a_token_without_the_flag_keeps_the_users_admin_flag(f))
    }),
    ("user_names_follow_the_label_alphabet", |f| {
        Box::pin(user_names_follow_the_label_alphabet(f))
    }),
    ("tokens_are_listed_in_order_of_issue", |f| {
        Box::pin(tokens_are_listed_in_order_of_issue(f))
    }),
    ("handles_share_tokens_and_revocations", |f| {
        Box::pin(handles_share_tokens_and_revocations(f))
    }),
    (
        "concurrent_handles_issue_tokens_that_all_authenticate",
        |f| Box::pin(concurrent_handles_issue_tokens_that_all_authenticate(f)),
    ),
    ("oidc_logins_issue_tokens_that_authenticate", |f| {
        Box::pin(oidc_logins_issue_tokens_that_authenticate(f))
    }),
    ("oidc_refresh_rotates_and_a_reuse_revokes_the_family", |f| {
        Box::pin(oidc_refresh_rotates_and_a_reuse_revokes_the_family(f))
    }),
    ("oidc_identities_are_never_merged", |f| {
        Box::pin(oidc_identities_are_never_merged(f))
    }),
    ("oidc_logout_and_expiry_end_the_tokens", |f| {
        Box::pin(oidc_logout_and_expiry_end_the_tokens(f))
    }),
];

fn caller(user: &str, admin: bool) -> Option<Caller> {
    Some(Caller {
        user: user.into(),
        admin,
    })
}

async fn issued_tokens_authenticate_as_their_user(factory: &dyn StoreFactory) -> CaseResult {
    let store = factory.open().await?;
    let (record, token) = store.issue_token("alice", Some(true)).await?;
    assert!(
        token.starts_with(&format!("cubbi_{}_", record.id)),
        "{record:?}"
    );
    assert_eq!(token.len(), "cubbi_".len() + 12 + 1 + 43);
    assert_eq!(record.user, "alice");
    assert!(record.admin);
    assert_eq!(record.last_used, None);
    assert_eq!(store.authenticate(&token).await?, caller("alice", true));
    let listed = store.tokens().await?;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, record.id);
    assert!(listed[0].last_used.is_some(), "{listed:?}");
    assert_eq!(listed[0].revoked, None);
    Ok(())
}

async fn right_id_with_wrong_secret_is_refused(factory: &dyn StoreFactory) -> CaseResult {
    let store = factory.open().await?;
    let (record, token) = store.issue_token("alice", Some(false)).await?;
    let forged = format!("cubbi_{}_{}", record.id, "A".repeat(43));
    assert_ne!(forged, token);
    assert_eq!(store.authenticate(&forged).await?, None);
    let mut tampered = token.clone();
    let last = tampered.pop().unwrap_or('x');
    tampered.push(if last == 'x' { 'y' } else { 'x' });
    assert_eq!(store.authenticate(&tampered).await?, None);
    assert!(store.authenticate(&token).await?.is_some());
    Ok(())
}

async fn malformed_tokens_are_refused(factory: &dyn StoreFactory) -> CaseResult {
    let store = factory.open().await?;
    let (record, token) = store.issue_token("alice", Some(false)).await?;
    let huge = "cubbi_".to_string() + &"a".repeat(1 << 20);
    let non_ascii = format!("cubbi_{}_{}", record.id, "é".repeat(22));
    let unprefixed = token.trim_start_matches("cubbi_").to_string();
    let cases = [
        "",
        "cubbi_",
        "cubbi__",
        &unprefixed,
        &huge,
        &non_ascii,
        &token[..token.len() - 1],
        &format!("{token}x"),
        &token.to_uppercase(),
        "Bearer",
        "ü",
        "cubbi_000000000000_' OR '1'='1'--aaaaaaaaaaaaaaaaaaaaaaaaaa",
    ];
    for case in cases {
        assert_eq!(store.authenticate(case).await?, None, "{case:.80}");
    }
    Ok(())
}

async fn revoked_tokens_no_longer_authenticate(factory: &dyn StoreFactory) -> CaseResult {
    let store = factory.open().await?;
    let (record, token) = store.issue_token("alice", Some(false)).await?;
    let (_, other) = store.issue_token("alice", Some(false)).await?;
    assert!(store.revoke(&record.id).await?);
    assert_eq!(store.authenticate(&token).await?, None);
    assert!(store.authenticate(&other).await?.is_some());
    assert!(!store.revoke(&record.id).await?, "already revoked");
    assert!(!store.revoke("000000000000").await?, "unknown id");
    let listed = store.tokens().await?;
    let revoked = listed.iter().find(|r| r.id == record.id);
    assert!(revoked.is_some_and(|r| r.revoked.is_some()), "{listed:?}");
    Ok(())
}

async fn a_token_without_the_flag_keeps_the_users_admin_flag(
    factory: &dyn StoreFactory,
) -> CaseResult {
    let store = factory.open().await?;
    let (record, first) = store.issue_token("alice", Some(true)).await?;
    assert!(record.admin);
    let (record, second) = store.issue_token("alice", None).await?;
    assert!(record.admin, "a token made without --admin demoted alice");
    for token in [&first, &second] {
        assert_eq!(store.authenticate(token).await?, caller("alice", true));
    }
    let (record, _) = store.issue_token("bob", None).await?;
    assert!(!record.admin, "a new user is not an admin");
    let (record, _) = store.issue_token("alice", Some(false)).await?;
    assert!(!record.admin);
    assert_eq!(store.authenticate(&first).await?, caller("alice", false));
    Ok(())
}

async fn user_names_follow_the_label_alphabet(factory: &dyn StoreFactory) -> CaseResult {
    let store = factory.open().await?;
    for bad in ["Bad Name", "", "1abc", "a'; DROP TABLE users; --"] {
        let refused = store.issue_token(bad, Some(false)).await;
        assert!(
            matches!(refused, Err(StoreError::InvalidUser { .. })),
            "{bad:?}: {refused:?}"
        );
    }
    assert!(store.tokens().await?.is_empty());
    store.issue_token(&"a".repeat(32), None).await?;
    assert_eq!(store.tokens().await?.len(), 1);
    Ok(())
}

async fn tokens_are_listed_in_order_of_issue(factory: &dyn StoreFactory) -> CaseResult {
    let store = factory.open().await?;
    let mut ids = Vec::new();
    for user in ["carol", "alice", "bob", "alice", "dave"] {
        ids.push(store.issue_token(user, None).await?.0.id);
    }
    let listed: Vec<String> = store.tokens().await?.into_iter().map(|r| r.id).collect();
    assert_eq!(listed, ids);
    Ok(())
}

/// What two service processes on one database rely on: a token issued through one handle
/// authenticates through another, and a revocation through one holds on the other.
async fn handles_share_tokens_and_revocations(factory: &dyn StoreFactory) -> CaseResult {
    let first = factory.open().await?;
    let second = factory.open().await?;
    let (record, token) = first.issue_token("alice", Some(true)).await?;
    assert_eq!(second.authenticate(&token).await?, caller("alice", true));
    let (_, bobs) = second.issue_token("bob", None).await?;
    assert_eq!(first.authenticate(&bobs).await?, caller("bob", false));
    assert!(second.revoke(&record.id).await?);
    assert_eq!(first.authenticate(&token).await?, None);
    drop((first, second));
    let reopened = factory.open().await?;
    assert_eq!(reopened.tokens().await?.len(), 2);
    assert_eq!(reopened.authenticate(&bobs).await?, caller("bob", false));
    Ok(())
}

async fn concurrent_handles_issue_tokens_that_all_authenticate(
    factory: &dyn StoreFactory,
) -> CaseResult {
    let first = factory.open().await?;
    let second = factory.open().await?;
    let issue = |store: Arc<dyn Store>, user: &'static str| async move {
        let mut tokens = Vec::new();
        for _ in 0..20 {
            tokens.push(store.issue_token(user, Some(false)).await?.1);
        }
        Ok::<_, StoreError>(tokens)
    };
    // Both handles create users (one of them the same) at once.
    let (a, b) = tokio::join!(
        tokio::spawn(issue(Arc::clone(&first), "user0")),
        tokio::spawn(issue(Arc::clone(&second), "user1")),
    );
    let (c, d) = tokio::join!(
        tokio::spawn(issue(Arc::clone(&first), "shared")),
        tokio::spawn(issue(Arc::clone(&second), "shared")),
    );
    let mut tokens = Vec::new();
    for joined in [a, b, c, d] {
        tokens.extend(joined.map_err(|err| StoreError::Worker(err.to_string()))??);
    }
    assert_eq!(first.tokens().await?.len(), 80);
    for token in &tokens {
        assert!(second.authenticate(token).await?.is_some());
    }
    Ok(())
}

/// The `projects` rows of a [`ProjectDb`] (SQLite or PostgreSQL): per user, ids and names
/// unique per user, the same refusals. Synchronous like [`ProjectRecords`]; PostgreSQL needs
/// a multi-threaded runtime around it.
pub fn project_records_round_trip_and_stay_per_user(db: &Arc<ProjectDb>) {
    let alice = db.of_user("alice");
    let bob = db.of_user("bob");
    alice.insert("github.com/o/r", "r", "text one").unwrap();
    assert_eq!(
        alice.get("github.com/o/r").unwrap().unwrap().text,
        "text one"
    );
    assert!(bob.get("github.com/o/r").unwrap().is_none());
    assert!(bob.list().unwrap().is_empty());
    // Bob may have the same id and name: they are his own.
    bob.insert("github.com/o/r", "r", "bob's").unwrap();
    assert!(matches!(
        alice.insert("github.com/o/r", "other", "x"),
        Err(ProjectError::AlreadyExists { name, .. }) if name == "r"
    ));
    assert!(matches!(
        alice.insert("github.com/o/s", "r", "x"),
        Err(ProjectError::NameTaken { id, .. }) if id == "github.com/o/r"
    ));
    alice.insert("github.com/o/s", "s", "text two").unwrap();
    assert!(matches!(
        alice.replace("github.com/o/s", "r", "x"),
        Err(ProjectError::NameTaken { .. })
    ));
    alice.replace("github.com/o/s", "s2", "text three").unwrap();
    let listed: Vec<String> = alice.list().unwrap().into_iter().map(|r| r.text).collect();
    assert_eq!(listed, vec!["text one", "text three"]);
    assert!(matches!(
        bob.replace("github.com/o/s", "s", "x"),
        Err(ProjectError::NotFound { .. })
    ));
    assert!(!bob.delete("github.com/o/s").unwrap());
    assert!(alice.delete("github.com/o/s").unwrap());
    assert_eq!(alice.list().unwrap().len(), 1);
    assert_eq!(bob.get("github.com/o/r").unwrap().unwrap().text, "bob's");
}

/// The outcomes of inserting one project name at once from several connections: one won, the
/// others were told the name is taken (and nothing else went wrong).
pub fn one_insert_won(outcomes: &[Result<(), ProjectError>]) {
    assert_eq!(
        outcomes.iter().filter(|o| o.is_ok()).count(),
        1,
        "{outcomes:?}"
    );
    assert!(
        outcomes
            .iter()
            .filter_map(|o| o.as_ref().err())
            .all(|err| matches!(err, ProjectError::NameTaken { .. })),
        "{outcomes:?}"
    );
}

const LIFETIMES: Lifetimes = Lifetimes {
    access: 600,
    refresh: 3600,
};

fn login(subject: &str, user: &str, admin: bool) -> OidcLogin {
    OidcLogin {
        issuer: "https://id.example.test".into(),
        subject: subject.into(),
        user: user.into(),
        admin,
        provider_refresh: Some(format!("provider-refresh-{subject}")),
        lifetimes: LIFETIMES,
    }
}

fn rotation(admin: bool) -> Rotation {
    Rotation {
        admin,
        provider_refresh: None,
        lifetimes: LIFETIMES,
    }
}

async fn oidc_logins_issue_tokens_that_authenticate(factory: &dyn StoreFactory) -> CaseResult {
    let store = factory.open().await?;
    let (_, api) = store.issue_token("bob", None).await?;
    let issued = store.oidc_login(&login("sub-alice", "alice", true)).await?;
    assert_eq!(issued.user, "alice");
    assert!(issued.access.starts_with("cubbia_") && issued.refresh.starts_with("cubbir_"));
    assert_eq!(
        store.authenticate(&issued.access).await?,
        caller("alice", true)
    );
    // A refresh token is not an access token, and API tokens keep working beside.
    assert_eq!(store.authenticate(&issued.refresh).await?, None);
    assert_eq!(store.authenticate(&api).await?, caller("bob", false));
    let mut forged = issued.access.clone();
    forged.pop();
    forged.push(if issued.access.ends_with('A') {
        'B'
    } else {
        'A'
    });
    assert_eq!(store.authenticate(&forged).await?, None);
    // The OIDC tokens are not API tokens: `serve token list` shows only bob's.
    assert_eq!(store.tokens().await?.len(), 1);
    // Another handle (another process) sees the login.
    let other = factory.open().await?;
    assert_eq!(
        other.authenticate(&issued.access).await?,
        caller("alice", true)
    );
    Ok(())
}

async fn oidc_refresh_rotates_and_a_reuse_revokes_the_family(
    factory: &dyn StoreFactory,
) -> CaseResult {
    let store = factory.open().await?;
    let first = store
        .oidc_login(&login("sub-alice", "alice", false))
        .await?;
    let RefreshCheck::Valid(family) = store.oidc_check_refresh(&first.refresh).await? else {
        panic!("a fresh refresh token was not valid");
    };
    assert_eq!(family.user, "alice");
    assert_eq!(family.subject, "sub-alice");
    assert_eq!(
        family.provider_refresh.as_deref(),
        Some("provider-refresh-sub-alice")
    );
    let second = store
        .oidc_rotate(&first.refresh, &rotation(true))
        .await?
        .expect("a rotation");
    assert_eq!(second.family, first.family);
    assert_ne!(second.refresh, first.refresh);
    // The admin flag follows what the provider said at the refresh.
    assert_eq!(
        store.authenticate(&second.access).await?,
        caller("alice", true)
    );
    // Another login of alice is another family, untouched by what happens to this one.
    let elsewhere = store
        .oidc_login(&login("sub-alice", "alice", false))
        .await?;
    // The spent refresh token comes back: the whole family goes.
    assert_eq!(
        store.oidc_check_refresh(&first.refresh).await?,
        RefreshCheck::Reused {
            user: "alice".into()
        }
    );
    assert_eq!(store.authenticate(&second.access).await?, None);
    assert_eq!(store.authenticate(&first.access).await?, None);
    assert_eq!(
        store.oidc_check_refresh(&second.refresh).await?,
        RefreshCheck::Refused
    );
    assert!(
        store
            .oidc_rotate(&second.refresh, &rotation(false))
            .await?
            .is_none()
    );
    assert!(store.authenticate(&elsewhere.access).await?.is_some());
    // A rotation racing a reuse: the second rotation of one token revokes the family.
    let third = store
        .oidc_rotate(&elsewhere.refresh, &rotation(false))
        .await?
        .expect("a rotation");
    assert!(
        store
            .oidc_rotate(&elsewhere.refresh, &rotation(false))
            .await?
            .is_none()
    );
    assert_eq!(store.authenticate(&third.access).await?, None);
    assert_eq!(
        store.oidc_check_refresh("cubbir_nonsense").await?,
        RefreshCheck::Refused
    );
    Ok(())
}

async fn oidc_identities_are_never_merged(factory: &dyn StoreFactory) -> CaseResult {
    let store = factory.open().await?;
    store.issue_token("carol", None).await?;
    let refused = store.oidc_login(&login("sub-carol", "carol", false)).await;
    assert!(
        matches!(&refused, Err(StoreError::IdentityClash { user }) if user == "carol"),
        "{refused:?}"
    );
    store
        .oidc_login(&login("sub-alice", "alice", false))
        .await?;
    let refused = store
        .oidc_login(&login("someone-else", "alice", false))
        .await;
    assert!(
        matches!(refused, Err(StoreError::IdentityClash { .. })),
        "{refused:?}"
    );
    // The same identity under a new name at the provider stays the user it was.
    let again = store
        .oidc_login(&login("sub-alice", "alice2", false))
        .await?;
    assert_eq!(again.user, "alice");
    let bad = store
        .oidc_login(&login("sub-x", "Not Allowed", false))
        .await;
    assert!(
        matches!(bad, Err(StoreError::InvalidUser { .. })),
        "{bad:?}"
    );
    Ok(())
}

async fn oidc_logout_and_expiry_end_the_tokens(factory: &dyn StoreFactory) -> CaseResult {
    let store = factory.open().await?;
    let issued = store
        .oidc_login(&login("sub-alice", "alice", false))
        .await?;
    assert!(store.oidc_logout("cubbia_bogus").await?.is_none());
    let family = store
        .oidc_logout(&issued.access)
        .await?
        .expect("its family");
    assert_eq!(family.id, issued.family);
    assert_eq!(store.authenticate(&issued.access).await?, None);
    assert_eq!(
        store.oidc_check_refresh(&issued.refresh).await?,
        RefreshCheck::Refused
    );
    let other = store
        .oidc_login(&login("sub-alice", "alice", false))
        .await?;
    assert!(store.oidc_revoke_family(&other.family).await?);
    assert!(!store.oidc_revoke_family(&other.family).await?);
    assert_eq!(store.authenticate(&other.access).await?, None);
    let mut expired = login("sub-alice", "alice", false);
    expired.lifetimes = Lifetimes {
        access: 0,
        refresh: 0,
    };
    let stale = store.oidc_login(&expired).await?;
    assert_eq!(store.authenticate(&stale.access).await?, None);
    assert_eq!(
        store.oidc_check_refresh(&stale.refresh).await?,
        RefreshCheck::Refused
    );
    Ok(())
}
