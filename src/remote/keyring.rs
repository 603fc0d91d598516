//! The system keyring: the freedesktop Secret Service (gnome-keyring, KWallet, KeePassXC) on
//! the D-Bus session bus, where remotes' tokens are kept when one answers.
//!
//! Each secret is one item of the default collection with the attributes
//! `application=cubbi`, `remote=NAME` and `kind=token|login`, so `secret-tool lookup
//! application cubbi remote NAME kind token` finds it. The secret travels over the session
//! bus with the `plain` algorithm: that bus is private to the user, as the 0600 file is.
//!
//! Every exchange runs on a thread of its own under a deadline, so a Secret Service that hangs
//! costs the CLI [`DEADLINE`] once, never a hang: after a failure the keyring is not tried again
//! in this process, and the caller falls back to the file. The fall-back is said once on
//! stderr. No error here ever holds a secret.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use zbus::{ObjectPath, OwnedObjectPath, OwnedVariant as OwnedValue, Variant as Value};

/// The longest one D-Bus call may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest one whole keyring operation (connect, session, unlock, item) may take.
pub const DEADLINE: Duration = Duration::from_secs(5);

const SERVICE: &str = "org.freedesktop.secrets";
const SERVICE_PATH: &str = "/org/freedesktop/secrets";
const SERVICE_IFACE: &str = "org.freedesktop.Secret.Service";
const COLLECTION_IFACE: &str = "org.freedesktop.Secret.Collection";
const ITEM_IFACE: &str = "org.freedesktop.Secret.Item";
const LOGIN_COLLECTION: &str = "/org/freedesktop/secrets/collection/login";

/// Which of a remote's secrets an item holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An API token (the token itself).
    Token,
    /// An OpenID Connect login (its JSON: access and refresh tokens).
    Login,
}

impl Kind {
    fn attribute(self) -> &'static str {
        match self {
            Kind::Token => "token",
            Kind::Login => "login",
        }
    }
}

/// Why the keyring could not be used. Never holds a secret.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error("CUBBI_NO_KEYRING is set")]
    Disabled,
    #[error("no D-Bus session bus (DBUS_SESSION_BUS_ADDRESS is not set)")]
    NoBus,
    #[error("no Secret Service answers on the session bus")]
    NoService,
    #[error("the session bus or the Secret Service did not answer in time")]
    Timeout,
    #[error("the keyring is locked and can only be unlocked at a prompt")]
    Locked,
    #[error("the keyring was not usable earlier in this run")]
    FailedBefore,
    #[error("the Secret Service failed: {0}")]
    Dbus(String),
}

impl KeyringError {
    /// Whether this is only "there is no keyring here", which needs no word to the user.
    fn is_absence(&self) -> bool {
        matches!(
            self,
            KeyringError::Disabled
                | KeyringError::NoBus
                | KeyringError::NoService
                | KeyringError::FailedBefore
        )
    }
}

impl From<zbus::Error> for KeyringError {
    fn from(err: zbus::Error) -> Self {
        match &err {
            zbus::Error::MethodError(name, _, _)
                if matches!(
                    name.as_str(),
                    "org.freedesktop.DBus.Error.ServiceUnknown"
                        | "org.freedesktop.DBus.Error.NameHasNoOwner"
                ) =>
            {
                KeyringError::NoService
            }
            zbus::Error::InputOutput(io) if io.kind() == std::io::ErrorKind::TimedOut => {
                KeyringError::Timeout
            }
            _ => KeyringError::Dbus(err.to_string()),
        }
    }
}

/// Set once the keyring failed in this process: later operations go straight to the file.
static BROKEN: AtomicBool = AtomicBool::new(false);
/// Whether the fall-back to the file was already said on stderr.
static WARNED: AtomicBool = AtomicBool::new(false);
/// One keyring operation at a time (the process is a short-lived CLI).
static LOCK: Mutex<()> = Mutex::new(());

/// Whether the environment allows trying the keyring: `CUBBI_NO_KEYRING` unset (or not `1`)
/// and a session bus address set.
fn bus_address() -> Result<String, KeyringError> {
    if std::env::var("CUBBI_NO_KEYRING").is_ok_and(|value| !value.is_empty() && value != "0") {
        return Err(KeyringError::Disabled);
    }
    match std::env::var("DBUS_SESSION_BUS_ADDRESS") {
        Ok(address) if !address.trim().is_empty() => Ok(address),
        _ => Err(KeyringError::NoBus),
    }
}

/// Whether the keyring may be tried at all here (for `remote list`'s wording, nothing else).
pub fn configured() -> bool {
    bus_address().is_ok() && !BROKEN.load(Ordering::Relaxed)
}

/// Stores `secret` as remote `name`'s `kind`; `Err` when the keyring cannot take it (the
/// caller then writes the file). An item already there is replaced.
pub fn save(name: &str, kind: Kind, secret: &[u8]) -> Result<(), KeyringError> {
    let secret = secret.to_vec();
    run(name, kind, move |connection, attributes| {
        Box::pin(async move { store(&connection, attributes, secret).await })
    })
}

/// Remote `name`'s `kind` from the keyring; `Ok(None)` when it holds none.
pub fn load(name: &str, kind: Kind) -> Result<Option<Vec<u8>>, KeyringError> {
    run(name, kind, |connection, attributes| {
        Box::pin(async move { fetch(&connection, attributes).await })
    })
}

/// Deletes remote `name`'s `kind` from the keyring; returns whether one was there.
pub fn remove(name: &str, kind: Kind) -> Result<bool, KeyringError> {
    run(name, kind, |connection, attributes| {
        Box::pin(async move { delete(&connection, attributes).await })
    })
}

/// Says once on stderr why the file is used instead of a keyring that is there but failed.
pub fn warn_fallback(err: &KeyringError) {
    if err.is_absence() || WARNED.swap(true, Ordering::Relaxed) {
        return;
    }
    eprintln!("warning: cannot use the system keyring ({err}); using the 0600 file instead");
}

type Attributes = HashMap<String, String>;
type Operation<T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, KeyringError>> + Send + 'static>>;

/// Runs one operation on a fresh connection, on a thread of its own with its own runtime
/// (callers may be inside a runtime already), and gives up after [`DEADLINE`] even when the
/// thread is stuck.
fn run<T, F>(name: &str, kind: Kind, operation: F) -> Result<T, KeyringError>
where
    T: Send + 'static,
    F: FnOnce(zbus::Connection, Attributes) -> Operation<T> + Send + 'static,
{
    let address = bus_address()?;
    if BROKEN.load(Ordering::Relaxed) {
        return Err(KeyringError::FailedBefore);
    }
    let _guard = LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let attributes = attributes(name, kind);
    let (sender, receiver) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("cubbi-keyring".into())
        .spawn(move || {
            let outcome = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime.block_on(async move {
                    match tokio::time::timeout(DEADLINE, async move {
                        let connect = zbus::connection::Builder::address(address.as_str())
                            .method_timeout(CALL_TIMEOUT)
                            .build();
                        let connection = tokio::time::timeout(CALL_TIMEOUT, connect)
                            .await
                            .map_err(|_| KeyringError::Timeout)??;
                        operation(connection, attributes).await
                    })
                    .await
                    {
                        Ok(outcome) => outcome,
                        Err(_) => Err(KeyringError::Timeout),
                    }
                }),
                Err(err) => Err(KeyringError::Dbus(err.to_string())),
            };
            // The receiver may have given up already.
            let _ = sender.send(outcome);
        });
    if let Err(err) = spawned {
        return Err(KeyringError::Dbus(err.to_string()));
    }
    let outcome = receiver
        .recv_timeout(DEADLINE + Duration::from_secs(1))
        .unwrap_or(Err(KeyringError::Timeout));
    if let Err(err) = &outcome
        && !matches!(err, KeyringError::Disabled | KeyringError::NoBus)
    {
        BROKEN.store(true, Ordering::Relaxed);
    }
    outcome
}

fn attributes(name: &str, kind: Kind) -> Attributes {
    HashMap::from([
        ("application".to_string(), "cubbi".to_string()),
        ("remote".to_string(), name.to_string()),
        ("kind".to_string(), kind.attribute().to_string()),
    ])
}

async fn proxy<'a>(
    connection: &zbus::Connection,
    path: ObjectPath<'a>,
    interface: &'static str,
) -> Result<zbus::Proxy<'a>, KeyringError> {
    Ok(zbus::proxy::Builder::new(connection)
        .destination(SERVICE)
        .path(path)
        .interface(interface)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await?)
}

async fn service(connection: &zbus::Connection) -> Result<zbus::Proxy<'static>, KeyringError> {
    proxy(
        connection,
        ObjectPath::from_static_str_unchecked(SERVICE_PATH),
        SERVICE_IFACE,
    )
    .await
}

/// A session for passing secrets (`plain`: the session bus is the user's own).
async fn open_session(service: &zbus::Proxy<'_>) -> Result<OwnedObjectPath, KeyringError> {
    let (_, session): (OwnedValue, OwnedObjectPath) = service
        .call("OpenSession", &("plain", Value::from("")))
        .await?;
    Ok(session)
}

/// Unlocks `objects` without a prompt, or says it cannot.
async fn unlock(
    service: &zbus::Proxy<'_>,
    objects: &[OwnedObjectPath],
) -> Result<(), KeyringError> {
    let (_, prompt): (Vec<OwnedObjectPath>, OwnedObjectPath) =
        service.call("Unlock", &(objects,)).await?;
    if prompt.as_str() != "/" {
        return Err(KeyringError::Locked);
    }
    Ok(())
}

/// The default collection (the login keyring when no default alias is set), unlocked.
async fn collection(
    connection: &zbus::Connection,
    service: &zbus::Proxy<'_>,
) -> Result<zbus::Proxy<'static>, KeyringError> {
    let alias: OwnedObjectPath = service.call("ReadAlias", &("default",)).await?;
    let path = if alias.as_str() == "/" {
        OwnedObjectPath::from(ObjectPath::from_static_str_unchecked(LOGIN_COLLECTION))
    } else {
        alias
    };
    let collection = proxy(connection, path.clone().into(), COLLECTION_IFACE).await?;
    let locked: bool = collection.get_property("Locked").await?;
    if locked {
        unlock(service, &[path]).await?;
    }
    Ok(collection)
}

async fn store(
    connection: &zbus::Connection,
    attributes: Attributes,
    secret: Vec<u8>,
) -> Result<(), KeyringError> {
    let service = service(connection).await?;
    let session = open_session(&service).await?;
    let collection = collection(connection, &service).await?;
    let label = format!(
        "cubbi {} of remote {}",
        attributes.get("kind").map_or("secret", String::as_str),
        attributes.get("remote").map_or("?", String::as_str)
    );
    let properties: HashMap<&str, Value<'_>> = HashMap::from([
        ("org.freedesktop.Secret.Item.Label", Value::from(label)),
        (
            "org.freedesktop.Secret.Item.Attributes",
            Value::from(attributes),
        ),
    ]);
    let secret = (session, Vec::<u8>::new(), secret, "text/plain");
    let (_, prompt): (OwnedObjectPath, OwnedObjectPath) = collection
        .call("CreateItem", &(properties, secret, true))
        .await?;
    if prompt.as_str() != "/" {
        return Err(KeyringError::Locked);
    }
    Ok(())
}

/// The items with `attributes`, unlocked ones first, then the locked ones unlocked.
async fn search(
    service: &zbus::Proxy<'_>,
    attributes: &Attributes,
) -> Result<Vec<OwnedObjectPath>, KeyringError> {
    let (mut unlocked, locked): (Vec<OwnedObjectPath>, Vec<OwnedObjectPath>) =
        service.call("SearchItems", &(attributes,)).await?;
    if !locked.is_empty() {
        unlock(service, &locked).await?;
        unlocked.extend(locked);
    }
    Ok(unlocked)
}

async fn fetch(
    connection: &zbus::Connection,
    attributes: Attributes,
) -> Result<Option<Vec<u8>>, KeyringError> {
    let service = service(connection).await?;
    let items = search(&service, &attributes).await?;
    let Some(item) = items.into_iter().next() else {
        return Ok(None);
    };
    let session = open_session(&service).await?;
    let item = proxy(connection, item.into(), ITEM_IFACE).await?;
    let (_, _, value, _): (OwnedObjectPath, Vec<u8>, Vec<u8>, String) =
        item.call("GetSecret", &(session,)).await?;
    Ok(Some(value))
}

async fn delete(
    connection: &zbus::Connection,
    attributes: Attributes,
) -> Result<bool, KeyringError> {
    let service = service(connection).await?;
    let items = search(&service, &attributes).await?;
    let found = !items.is_empty();
    for item in items {
        let item = proxy(connection, item.into(), ITEM_IFACE).await?;
        let prompt: OwnedObjectPath = item.call("Delete", &()).await?;
        if prompt.as_str() != "/" {
            return Err(KeyringError::Locked);
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_name_the_application_remote_and_kind() {
        let attributes = attributes("team", Kind::Login);
        assert_eq!(attributes["application"], "cubbi");
        assert_eq!(attributes["remote"], "team");
        assert_eq!(attributes["kind"], "login");
        assert_eq!(Kind::Token.attribute(), "token");
    }

    #[test]
    fn absence_is_not_worth_a_warning_but_failures_are() {
        assert!(KeyringError::NoBus.is_absence());
        assert!(KeyringError::NoService.is_absence());
        assert!(!KeyringError::Timeout.is_absence());
        assert!(!KeyringError::Locked.is_absence());
    }
}
