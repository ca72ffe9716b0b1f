//! Admin authentication: a bearer token for scripts, or a session cookie for people who signed
//! in once with the token. Sessions and CSRF tokens are HMACs keyed by the admin token, so
//! they end when the token changes; a sign-out is also recorded on the server
//! (`store::admin`). Comparisons are constant-time.

use actix_web::HttpRequest;
use actix_web::cookie::{Cookie, SameSite};
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;

pub const SESSION_COOKIE: &str = "keyrelay_admin";
/// How long a sign-in lasts.
const SESSION_SECS: i64 = 12 * 3600;

pub struct AdminAuth {
    token: SecretString,
    /// Mark the cookie `Secure` (unless the dashboard is served over plain http).
    secure_cookie: bool,
}

/// What a request presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presented {
    /// No `Authorization` header and no valid session cookie.
    Nothing,
    /// An `Authorization` header that is not `Bearer <the admin token>`.
    WrongToken,
    Valid(Credential),
}

/// How a request proved who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    Bearer,
    /// The session value, which the CSRF token is derived from.
    Session(String),
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn equal(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

impl AdminAuth {
    pub fn new(token: SecretString, secure_cookie: bool) -> AdminAuth {
        AdminAuth {
            token,
            secure_cookie,
        }
    }

    /// A session's own MAC (its last part), which names it in the sign-out record, and when
    /// it expires.
    pub fn session_identity(
        &self,
        session: &str,
    ) -> Option<(String, chrono::DateTime<chrono::Utc>)> {
        let (body, mac) = session.rsplit_once('.')?;
        let issued: i64 = body.split('.').next()?.parse().ok()?;
        let expires = chrono::DateTime::from_timestamp(issued.checked_add(SESSION_SECS)?, 0)?;
        Some((mac.to_string(), expires))
    }

    fn mac(&self, message: &str) -> String {
        hex(&hmac_sha256::HMAC::mac(
            message.as_bytes(),
            self.token.expose_secret().as_bytes(),
        ))
    }

    pub fn token_matches(&self, candidate: &str) -> bool {
        crate::crypto::token_matches(candidate, &self.token)
    }

    /// A new session value: `<issued>.<nonce>.<mac>`.
    pub fn new_session(&self) -> String {
        let body = format!(
            "{}.{:032x}",
            chrono::Utc::now().timestamp(),
            rand::random::<u128>()
        );
        let mac = self.mac(&format!("session:{body}"));
        format!("{body}.{mac}")
    }

    fn session_valid(&self, value: &str) -> bool {
        let Some((body, mac)) = value.rsplit_once('.') else {
            return false;
        };
        let Some(issued) = body.split('.').next().and_then(|t| t.parse::<i64>().ok()) else {
            return false;
        };
        let age = chrono::Utc::now().timestamp() - issued;
        (0..SESSION_SECS).contains(&age) && equal(mac, &self.mac(&format!("session:{body}")))
    }

    pub fn session_cookie(&self, value: String) -> Cookie<'static> {
        Cookie::build(SESSION_COOKIE, value)
            .path("/admin")
            .http_only(true)
            .same_site(SameSite::Strict)
            .secure(self.secure_cookie)
            .max_age(actix_web::cookie::time::Duration::seconds(SESSION_SECS))
            .finish()
    }

    /// The CSRF token forms of this session must carry.
    pub fn csrf_for(&self, session: &str) -> String {
        self.mac(&format!("csrf:{session}"))
    }

    pub fn csrf_valid(&self, session: &str, candidate: &str) -> bool {
        equal(candidate, &self.csrf_for(session))
    }

    /// What the request presented: an `Authorization` header decides alone (right or wrong),
    /// else a valid session cookie.
    pub fn presented(&self, request: &HttpRequest) -> Presented {
        if crate::guard::has_authorization(request) {
            return match crate::guard::bearer_token(request) {
                Some(token) if self.token_matches(token) => Presented::Valid(Credential::Bearer),
                _ => Presented::WrongToken,
            };
        }
        match request.cookie(SESSION_COOKIE) {
            Some(cookie) if self.session_valid(cookie.value()) => {
                Presented::Valid(Credential::Session(cookie.value().to_string()))
            }
            _ => Presented::Nothing,
        }
    }

    /// The request's credential, if it presented a valid one.
    pub fn credential(&self, request: &HttpRequest) -> Option<Credential> {
        match self.presented(request) {
            Presented::Valid(credential) => Some(credential),
            Presented::Nothing | Presented::WrongToken => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_and_csrf_tokens_are_bound_to_the_admin_token() {
        let auth = AdminAuth::new("s3cret-admin-token".to_string().into(), true);
        let other = AdminAuth::new("another-token".to_string().into(), true);
        let session = auth.new_session();
        assert!(auth.session_valid(&session));
        assert!(!other.session_valid(&session));
        assert!(!auth.session_valid(&session.replace('.', "x")));
        let csrf = auth.csrf_for(&session);
        assert!(auth.csrf_valid(&session, &csrf));
        assert!(!auth.csrf_valid(&auth.new_session(), &csrf));
        assert!(auth.token_matches("s3cret-admin-token"));
        assert!(!auth.token_matches("s3cret-admin-toke"));
        let expired = format!("{}.00.{}", 1, auth.mac("session:1.00"));
        assert!(!auth.session_valid(&expired));
    }
}
