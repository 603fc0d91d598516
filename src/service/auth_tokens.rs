//! The service's own tokens for users who logged in with OpenID Connect: a short-lived
//! access token and a rotating refresh token, both random strings of which the store keeps
//! only the SHA-256 (like API tokens), grouped in a *family* per login.
//!
//! Why opaque tokens rather than signed JWTs: every request already asks the store about
//! API tokens, so an access token costs the same lookup; and a lookup makes revocation
//! immediate (logout, a reused refresh token, a user removed from the allowed groups end
//! every token of the family at once), with no signing key to keep and rotate.
//!
//! Formats: `cubbia_<id>_<secret>` (access) and `cubbir_<id>_<secret>` (refresh), the id 12
//! hex digits that find the row, the secret 32 random bytes (base64url).

use super::store::{new_token_with_prefix, token_id_with_prefix};

pub const ACCESS_PREFIX: &str = "cubbia_";
pub const REFRESH_PREFIX: &str = "cubbir_";

/// How long the tokens of a login or a refresh live, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetimes {
    pub access: i64,
    pub refresh: i64,
}

/// A login the service verified with the provider: who it is, and what they may be.
#[derive(Clone)]
pub struct OidcLogin {
    pub issuer: String,
    pub subject: String,
    /// The cubbi user name the username claim gave (used when the identity is new).
    pub user: String,
    pub admin: bool,
    /// The provider's refresh token, kept to read the groups again at each refresh.
    pub provider_refresh: Option<String>,
    pub lifetimes: Lifetimes,
}

/// Hand-written so that no `{:?}` shows the provider's refresh token.
impl std::fmt::Debug for OidcLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcLogin")
            .field("issuer", &self.issuer)
            .field("subject", &self.subject)
            .field("user", &self.user)
            .field("admin", &self.admin)
            .field(
                "provider_refresh",
                &self.provider_refresh.as_ref().map(|_| "set"),
            )
            .finish()
    }
}

/// What a refresh changes: the admin flag and provider token as the provider now says.
#[derive(Clone)]
pub struct Rotation {
    pub admin: bool,
    /// A new provider refresh token (the provider rotated it); None keeps the old one.
    pub provider_refresh: Option<String>,
    pub lifetimes: Lifetimes,
}

/// A pair of tokens just issued; the texts are shown to the client once.
#[derive(Clone)]
pub struct IssuedTokens {
    pub access: String,
    pub refresh: String,
    pub access_expires: i64,
    pub refresh_expires: i64,
    pub family: String,
    pub user: String,
    pub admin: bool,
}

impl std::fmt::Debug for IssuedTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedTokens")
            .field("family", &self.family)
            .field("user", &self.user)
            .field("admin", &self.admin)
            .finish_non_exhaustive()
    }
}

/// A login's family as the store keeps it.
#[derive(Clone, PartialEq, Eq)]
pub struct FamilyRecord {
    pub id: String,
    pub user: String,
    pub issuer: String,
    pub subject: String,
    pub provider_refresh: Option<String>,
}

impl std::fmt::Debug for FamilyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FamilyRecord")
            .field("id", &self.id)
            .field("user", &self.user)
            .field("issuer", &self.issuer)
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

/// What a refresh token is worth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshCheck {
    /// Unused, unexpired, its family live: the refresh may go on.
    Valid(FamilyRecord),
    /// Already used once: its whole family is now revoked.
    Reused { user: String },
    /// Unknown, malformed, expired, or of a revoked family.
    Refused,
}

/// Which kind a token text is, with its row id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind<'a> {
    Access(&'a str),
    Refresh(&'a str),
}

impl<'a> TokenKind<'a> {
    pub fn of(token: &'a str) -> Option<Self> {
        if let Some(id) = token_id_with_prefix(token, ACCESS_PREFIX) {
            return Some(Self::Access(id));
        }
        token_id_with_prefix(token, REFRESH_PREFIX).map(Self::Refresh)
    }

    pub fn id(self) -> &'a str {
        match self {
            Self::Access(id) | Self::Refresh(id) => id,
        }
    }

    /// The `kind` column's value.
    pub fn column(self) -> &'static str {
        match self {
            Self::Access(_) => "access",
            Self::Refresh(_) => "refresh",
        }
    }
}

/// A new (id, access token) and (id, refresh token).
pub(super) fn new_pair() -> ((String, String), (String, String)) {
    (
        new_token_with_prefix(ACCESS_PREFIX),
        new_token_with_prefix(REFRESH_PREFIX),
    )
}

/// A new family id: 16 random bytes, hex.
pub(super) fn new_family_id() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_told_apart_by_prefix() {
        let ((access_id, access), (refresh_id, refresh)) = new_pair();
        assert_eq!(TokenKind::of(&access), Some(TokenKind::Access(&access_id)));
        assert_eq!(
            TokenKind::of(&refresh),
            Some(TokenKind::Refresh(&refresh_id))
        );
        let api = super::super::store::new_token().1;
        assert_eq!(TokenKind::of(&api), None);
        assert_eq!(TokenKind::of(&access[..access.len() - 1]), None);
        assert_eq!(TokenKind::of("cubbia_"), None);
    }

    #[test]
    fn debug_shows_no_token() {
        let login = OidcLogin {
            issuer: "https://id.example".into(),
            subject: "s".into(),
            user: "alice".into(),
            admin: false,
            provider_refresh: Some("provider-secret".into()),
            lifetimes: Lifetimes {
                access: 1,
                refresh: 2,
            },
        };
        assert!(!format!("{login:?}").contains("provider-secret"));
        let ((_, access), (_, refresh)) = new_pair();
        let issued = IssuedTokens {
            access: access.clone(),
            refresh: refresh.clone(),
            access_expires: 0,
            refresh_expires: 0,
            family: "f".into(),
            user: "alice".into(),
            admin: false,
        };
        let shown = format!("{issued:?}");
        assert!(
            !shown.contains(&access) && !shown.contains(&refresh),
            "{shown}"
        );
    }
}
