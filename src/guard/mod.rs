//! What every HTTP request meets before a handler, and every answer after it: the body must
//! arrive whole within `http.body_timeout_secs` and under a size cap (408, 413), answers carry
//! `X-Content-Type-Options: nosniff` (and `Cache-Control: no-store` on the admin and shop
//! APIs); the client's address, through `http.trusted_proxies`; the bearer token of a request;
//! and the throttle for wrong tokens, keyed by that address.

mod body;
mod client;
mod throttle;

pub use body::{BodyPolicy, guard_request};
pub use client::{ClientAddress, TrustedProxies};
pub use throttle::TokenThrottle;

use actix_web::HttpRequest;
use actix_web::http::header;

/// The token of an `Authorization: Bearer <token>` header; the scheme is matched
/// case-insensitively (RFC 6750 §2.1 refers to RFC 7235, where schemes are case-insensitive).
pub fn bearer_token(request: &HttpRequest) -> Option<&str> {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.trim_start().split_once(char::is_whitespace)?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Whether the request carries an `Authorization` header at all.
pub fn has_authorization(request: &HttpRequest) -> bool {
    request.headers().contains_key(header::AUTHORIZATION)
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for value in ["Bearer abc", "bearer abc", "BEARER  abc ", "BeArEr\tabc"] {
            let request = TestRequest::default()
                .insert_header((header::AUTHORIZATION, value))
                .to_http_request();
            assert_eq!(bearer_token(&request), Some("abc"), "{value:?}");
        }
        for value in ["Basic abc", "Bearerabc", "abc"] {
            let request = TestRequest::default()
                .insert_header((header::AUTHORIZATION, value))
                .to_http_request();
            assert_eq!(bearer_token(&request), None, "{value:?}");
        }
    }
}
