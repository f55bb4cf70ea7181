//! Name resolution for the gateway's outgoing connections (scenario calls, FTP, webhook
//! delivery checks).
//!
//! The system resolver (`getaddrinfo`) has no timeout, so the old code started a thread
//! per lookup to be able to give up on it. Here hickory's resolver (reading
//! /etc/resolv.conf and /etc/hosts) runs on one small runtime of its own; a lookup from
//! any thread is a task on it, waited for with a timeout. Answers are cached by TTL.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::OnceLock;
use std::time::Duration;

use hickory_resolver::Resolver;
use hickory_resolver::config::{ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;

/// The longest one lookup may take, whatever the caller's budget.
pub const DNS_TIMEOUT: Duration = Duration::from_secs(5);

struct Dns {
    runtime: tokio::runtime::Runtime,
    resolver: Resolver<TokioRuntimeProvider>,
}

static DNS: OnceLock<Result<Dns, String>> = OnceLock::new();

fn dns() -> io::Result<&'static Dns> {
    DNS.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("dns")
            .enable_all()
            .build()
            .map_err(|e| format!("starting the resolver's runtime: {e}"))?;
        let resolver = runtime.block_on(async {
            let mut builder = match Resolver::builder_tokio() {
                Ok(b) => b,
                // No usable /etc/resolv.conf: names in /etc/hosts still resolve.
                Err(_) => Resolver::builder_with_config(
                    ResolverConfig::default(),
                    TokioRuntimeProvider::default(),
                ),
            };
            let opts = builder.options_mut();
            opts.timeout = Duration::from_secs(2);
            opts.attempts = 2;
            opts.use_hosts_file = ResolveHosts::Always;
            builder
                .build()
                .map_err(|e| format!("building the resolver: {e}"))
        })?;
        Ok(Dns { runtime, resolver })
    })
    .as_ref()
    .map_err(|e| io::Error::other(e.clone()))
}

/// Splits `host:port` (`[v6]:port` for IPv6 literals).
fn split_netloc(netloc: &str) -> io::Result<(&str, u16)> {
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad address {netloc:?}"),
        )
    };
    let (host, port) = netloc.rsplit_once(':').ok_or_else(bad)?;
    let port = port.parse::<u16>().map_err(|_| bad())?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host, port))
}

/// IP literals and `localhost` (RFC 6761) need no lookup.
fn without_lookup(host: &str, port: u16) -> Option<Vec<SocketAddr>> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(vec![SocketAddr::new(ip, port)]);
    }
    if host.eq_ignore_ascii_case("localhost") || host.eq_ignore_ascii_case("localhost.") {
        return Some(vec![
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port),
        ]);
    }
    None
}

/// A lookup's answer (None: it took too long) as socket addresses, or a clear error.
fn addresses<E: std::fmt::Display>(
    host: &str,
    port: u16,
    found: Option<Result<Vec<IpAddr>, E>>,
) -> io::Result<Vec<SocketAddr>> {
    match found {
        Some(Ok(ips)) if ips.is_empty() => Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{host} has no address"),
        )),
        Some(Ok(ips)) => Ok(ips
            .into_iter()
            .map(|ip| SocketAddr::new(ip, port))
            .collect()),
        Some(Err(e)) => Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("resolving {host}: {e}"),
        )),
        None => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("resolving {host} took too long"),
        )),
    }
}

/// Starts a lookup of `host` on the resolver's runtime; its answer (None when it took
/// longer than `timeout`) comes through `done`.
fn start_lookup(
    host: &str,
    timeout: Duration,
    done: impl FnOnce(Option<Result<Vec<IpAddr>, String>>) + Send + 'static,
) -> io::Result<tokio::task::AbortHandle> {
    let dns = dns()?;
    let name = host.to_string();
    let resolver = dns.resolver.clone();
    let task = dns.runtime.spawn(async move {
        let found = tokio::time::timeout(timeout, resolver.lookup_ip(name.as_str())).await;
        done(
            found
                .ok()
                .map(|r| r.map(|l| l.iter().collect()).map_err(|e| e.to_string())),
        );
    });
    Ok(task.abort_handle())
}

/// Resolves `host:port`, giving up after `timeout` (at most [`DNS_TIMEOUT`]). IP
/// literals and `localhost` (RFC 6761) are answered without a lookup.
pub fn resolve(netloc: &str, timeout: Duration) -> io::Result<Vec<SocketAddr>> {
    let (host, port) = split_netloc(netloc)?;
    if let Some(addrs) = without_lookup(host, port) {
        return Ok(addrs);
    }
    let timeout = timeout.min(DNS_TIMEOUT);
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let task = start_lookup(host, timeout, move |found| {
        let _ = tx.send(found);
    })?;
    let found = rx.recv_timeout(timeout + Duration::from_millis(100)).ok();
    if found.is_none() {
        task.abort();
    }
    addresses(host, port, found.flatten())
}

/// The same as [`resolve`] for async callers (the delivery client's connector): the
/// lookup runs on the resolver's own runtime; the caller waits without blocking a thread.
pub async fn resolve_async(
    host: &str,
    port: u16,
    timeout: Duration,
) -> io::Result<Vec<SocketAddr>> {
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Some(addrs) = without_lookup(host, port) {
        return Ok(addrs);
    }
    if host.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty host"));
    }
    let timeout = timeout.min(DNS_TIMEOUT);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = start_lookup(host, timeout, move |found| {
        let _ = tx.send(found);
    })?;
    let found = tokio::time::timeout(timeout + Duration::from_millis(100), rx)
        .await
        .ok()
        .and_then(Result::ok);
    if found.is_none() {
        task.abort();
    }
    addresses(host, port, found.flatten())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_and_localhost_need_no_lookup() {
        let t = Duration::from_secs(1);
        assert_eq!(
            resolve("127.0.0.1:80", t).unwrap(),
            vec!["127.0.0.1:80".parse().unwrap()]
        );
        assert_eq!(
            resolve("[::1]:8080", t).unwrap(),
            vec!["[::1]:8080".parse().unwrap()]
        );
        assert!(resolve("localhost:21", t).unwrap()[0].ip().is_loopback());
        assert!(resolve("no-port", t).is_err());
        assert!(resolve(":80", t).is_err());
    }

    #[test]
    fn an_unknown_name_fails_within_the_timeout() {
        let started = std::time::Instant::now();
        assert!(
            resolve(
                "name-that-does-not-exist.invalid:80",
                Duration::from_millis(500)
            )
            .is_err()
        );
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}
