//! `cors`: which web pages may call the channel's webhook from a browser. Preflights
//! are answered here, without the scenario; actual responses to an allowed origin get
//! `Access-Control-Allow-Origin`. Every header value is made once, when the channel is
//! applied.

use actix_web::http::Method;
use actix_web::http::header::{HeaderMap, HeaderValue};

use super::settings::CorsSettings;

pub struct Cors {
    any_origin: bool,
    /// Serialised origins (`https://app.example.com`), lowercase.
    origins: Box<[Box<str>]>,
    methods: Box<[Method]>,
    allow_methods: Option<HeaderValue>,
    /// `*` among the allowed headers: a preflight's requested headers are allowed.
    any_header: bool,
    allow_headers: Option<HeaderValue>,
    max_age: Option<HeaderValue>,
}

/// The answer to a preflight from an allowed origin.
pub struct Preflight {
    pub allow_origin: HeaderValue,
    pub allow_methods: Option<HeaderValue>,
    pub allow_headers: Option<HeaderValue>,
    pub max_age: Option<HeaderValue>,
}

const ANY: HeaderValue = HeaderValue::from_static("*");

impl Cors {
    pub fn new(s: &CorsSettings) -> Cors {
        let joined = |list: &[String]| {
            (!list.is_empty())
                .then(|| HeaderValue::from_str(&list.join(", ")).ok())
                .flatten()
        };
        let headers: Vec<String> = s
            .allowed_headers
            .iter()
            .filter(|h| *h != "*")
            .cloned()
            .collect();
        Cors {
            any_origin: s.allowed_origins.iter().any(|o| o == "*"),
            origins: s
                .allowed_origins
                .iter()
                .map(|o| o.to_ascii_lowercase().into_boxed_str())
                .collect(),
            methods: s
                .allowed_methods
                .iter()
                .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
                .collect(),
            allow_methods: joined(&s.allowed_methods),
            any_header: s.allowed_headers.iter().any(|h| h == "*"),
            allow_headers: joined(&headers),
            max_age: s.max_age_s.map(HeaderValue::from),
        }
    }

    /// What `Access-Control-Allow-Origin` says to this `Origin`, if it is allowed.
    pub fn allow_origin(&self, origin: &HeaderValue) -> Option<HeaderValue> {
        if self.any_origin {
            return Some(ANY);
        }
        let origin_bytes = origin.as_bytes();
        self.origins
            .iter()
            .any(|o| o.as_bytes().eq_ignore_ascii_case(origin_bytes))
            .then(|| origin.clone())
    }

    /// Does `Access-Control-Allow-Origin` depend on `Origin` (then `Vary: Origin`)?
    pub fn varies(&self) -> bool {
        !self.any_origin
    }

    /// The answer to a preflight (`Origin`, `Access-Control-Request-Method`), or
    /// `None`: refused (the origin or the method is not allowed).
    pub fn preflight(&self, origin: &HeaderValue, headers: &HeaderMap) -> Option<Preflight> {
        let allow_origin = self.allow_origin(origin)?;
        let method = headers
            .get("access-control-request-method")
            .and_then(|m| Method::from_bytes(m.as_bytes()).ok())?;
        if !self.methods.contains(&method) {
            return None;
        }
        let allow_headers = if self.any_header {
            headers.get("access-control-request-headers").cloned()
        } else {
            self.allow_headers.clone()
        };
        Some(Preflight {
            allow_origin,
            allow_methods: self.allow_methods.clone(),
            allow_headers,
            max_age: self.max_age.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(origins: &[&str]) -> Cors {
        Cors::new(&CorsSettings {
            allowed_origins: origins.iter().map(|s| s.to_string()).collect(),
            allowed_methods: vec!["POST".into()],
            allowed_headers: vec!["content-type".into()],
            max_age_s: Some(600),
        })
    }

    #[test]
    fn origins_and_methods() {
        let c = cors(&["https://app.example"]);
        let mut h = HeaderMap::new();
        h.insert(
            actix_web::http::header::ACCESS_CONTROL_REQUEST_METHOD,
            HeaderValue::from_static("POST"),
        );
        let ok = c
            .preflight(&HeaderValue::from_static("https://App.example"), &h)
            .unwrap();
        assert_eq!(ok.allow_origin, "https://App.example");
        assert_eq!(ok.allow_headers.unwrap(), "content-type");
        assert_eq!(ok.max_age.unwrap(), "600");
        assert!(
            c.preflight(&HeaderValue::from_static("https://evil.example"), &h)
                .is_none()
        );
        h.insert(
            actix_web::http::header::ACCESS_CONTROL_REQUEST_METHOD,
            HeaderValue::from_static("DELETE"),
        );
        assert!(
            c.preflight(&HeaderValue::from_static("https://app.example"), &h)
                .is_none()
        );
        assert_eq!(
            cors(&["*"])
                .allow_origin(&HeaderValue::from_static("https://x.example"))
                .unwrap(),
            "*"
        );
    }
}
