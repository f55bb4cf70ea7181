//! A request's header values copied out of its connection's read buffer, into a header
//! table sized to the request.
//!
//! Why: actix-http parses header values as slices of the connection's 8 KiB read buffer,
//! and when a request is done its head is kept for reuse: up to 128 `HttpRequest`s per
//! worker in actix-web's request pool and up to 128 request heads per worker in
//! actix-http's, neither of them configurable. A kept head keeps its header values, so
//! each pins a whole read buffer of a connection long gone, plus a header table made for
//! 16 headers (~6.4 KB). After a burst of a few hundred concurrent requests that is
//! ~8 MB the node never gives back (issue #8, measured with heaptrack). With its own
//! copies, a kept head holds only its values, in one small buffer.
//!
//! Cost: two allocations (the values' buffer and the table), on every request
//! (benches/run.sh measures the trivial webhook with it). Over HTTP/2 the values are
//! copies already (the h2 decoder's); they are copied again, which is cheap next to a
//! request.

use actix_web::Error;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderMap, HeaderValue};
use actix_web::middleware::Next;
use actix_web::web::BytesMut;

/// Outermost middleware: nothing has cloned the request yet, so its head is ours to
/// change (`headers_mut` needs the only reference).
pub async fn own_headers(
    mut req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let headers = req.headers_mut();
    *headers = owned(headers);
    next.call(req).await
}

/// The same headers (the values of a name in their order), their values copied into
/// one buffer of the request's own: one allocation for all of them, and a value cloned
/// later (the webhook's start parameters clone the headers) only counts a reference.
fn owned(headers: &HeaderMap) -> HeaderMap {
    let total = headers.iter().map(|(_, value)| value.len()).sum();
    let mut buf = BytesMut::with_capacity(total);
    for (_, value) in headers.iter() {
        buf.extend_from_slice(value.as_bytes());
    }
    let all = buf.freeze();
    let mut own = HeaderMap::with_capacity(headers.len_keys());
    let mut at = 0;
    // The same map, unchanged, iterates in the same order as above.
    for (name, value) in headers.iter() {
        let end = at + value.len();
        let copy = match HeaderValue::from_maybe_shared(all.slice(at..end)) {
            Ok(mut copy) => {
                copy.set_sensitive(value.is_sensitive());
                copy
            }
            // Not reached: the bytes were a valid value when parsed. Keep it as it is.
            Err(_) => value.clone(),
        };
        at = end;
        own.append(name.clone(), copy);
    }
    own
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::HeaderName;
    use actix_web::web::Bytes;

    #[test]
    fn copies_keep_names_values_and_order() {
        let buffer = Bytes::from_static(b"text/plainab");
        let mut headers = HeaderMap::new();
        let accept = HeaderName::from_static("accept");
        let x = HeaderName::from_static("x-a");
        headers.append(
            accept.clone(),
            HeaderValue::from_maybe_shared(buffer.slice(0..10)).unwrap(),
        );
        headers.append(x.clone(), HeaderValue::from_static("a"));
        headers.append(x.clone(), HeaderValue::from_static("b"));
        let own = owned(&headers);
        assert_eq!(own.len(), 3);
        assert_eq!(own.get(&accept).unwrap(), "text/plain");
        let xs: Vec<_> = own.get_all(&x).collect();
        assert_eq!(xs, ["a", "b"]);
        // The copy does not point into the buffer.
        let copied = own.get(&accept).unwrap().as_bytes().as_ptr();
        assert!(!buffer.as_ptr_range().contains(&copied));
    }

    #[test]
    fn sensitivity_and_empty_values_are_kept() {
        let mut headers = HeaderMap::new();
        let mut secret = HeaderValue::from_static("Bearer t");
        secret.set_sensitive(true);
        headers.append(HeaderName::from_static("authorization"), secret);
        headers.append(
            HeaderName::from_static("x-empty"),
            HeaderValue::from_static(""),
        );
        let own = owned(&headers);
        let auth = own.get("authorization").unwrap();
        assert_eq!(auth, "Bearer t");
        assert!(auth.is_sensitive());
        assert_eq!(own.get("x-empty").unwrap(), "");
        assert!(owned(&HeaderMap::new()).is_empty());
    }
}
