//! Where an outgoing call goes: the channel's `outgoing_url` plus the path the script
//! gave, and never outside it. The path often carries caller input, so `..` segments
//! (also percent-encoded, double-encoded or with backslashes), control characters and
//! anything that would change the host are refused, for HTTP and FTP alike.

/// Decoding rounds checked (`%252e%252e` is `%2e%2e` after one, `..` after two); a path
/// still changing after that many is refused.
const DECODE_ROUNDS: usize = 6;

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// Refuses a path that could climb out of the base, at every decoding level.
fn check_segments(path: &str) -> Result<(), String> {
    let mut level = path.to_string();
    for _ in 0..DECODE_ROUNDS {
        if level.chars().any(|c| c.is_control()) {
            return Err("the outgoing path has control characters".into());
        }
        if level.contains('\\') {
            return Err("the outgoing path has a backslash".into());
        }
        if level.split('/').any(|seg| seg == "..") {
            return Err("the outgoing path may not leave the outgoing_url (`..`)".into());
        }
        let next = percent_decode(&level);
        if next == level {
            return Ok(());
        }
        level = next;
    }
    Err("the outgoing path is percent-encoded too many times".into())
}

/// `base` + `path` with exactly one slash between them (an empty path is the base, a
/// path starting with `?` adds a query), refused when it would leave the base: another
/// host, scheme or port, or a path outside the base's.
pub fn join_url(base: &str, path: &str) -> Result<String, String> {
    if path.is_empty() {
        return Ok(base.to_string());
    }
    let path_part = path.split(['?', '#']).next().unwrap_or_default();
    check_segments(path_part)?;
    if path.chars().any(|c| c.is_control()) {
        return Err("the outgoing path has control characters".into());
    }
    let joined = match (base.ends_with('/'), path.starts_with('/')) {
        (true, true) => format!("{}{}", base, &path[1..]),
        (false, false) if !path.starts_with('?') => format!("{base}/{path}"),
        _ => format!("{base}{path}"),
    };
    // The URL parser normalises what is left (dot segments in any spelling): the
    // result must still be the same origin, below the base's path.
    let (b, j) = match (url::Url::parse(base), url::Url::parse(&joined)) {
        (Ok(b), Ok(j)) => (b, j),
        _ => return Err("the outgoing path does not make a valid URL".into()),
    };
    if b.scheme() != j.scheme()
        || b.host_str() != j.host_str()
        || b.port_or_known_default() != j.port_or_known_default()
        || b.username() != j.username()
    {
        return Err("the outgoing path may not change the host".into());
    }
    let base_path = b.path().trim_end_matches('/');
    let inside = j.path() == b.path()
        || j.path() == base_path
        || j.path().starts_with(&format!("{base_path}/"));
    if !inside {
        return Err("the outgoing path may not leave the outgoing_url".into());
    }
    Ok(joined)
}

/// A file below the FTP URL's folder: `file` is always relative to it (a leading `/`
/// does not reach the server's root).
pub fn join_path(folder: &str, file: &str) -> Result<String, String> {
    check_segments(file)?;
    let folder = percent_decode(folder);
    let folder = folder.trim_end_matches('/');
    let file = file.trim_start_matches('/');
    if file.is_empty() {
        return Err("the FTP path names no file".into());
    }
    Ok(format!("{folder}/{file}"))
}

/// Percent-decodes a URL's user or password.
pub fn decode_component(s: &str) -> String {
    percent_decode(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_join_with_one_slash() {
        let j = |b, p| join_url(b, p).unwrap();
        assert_eq!(j("http://a/api", "orders"), "http://a/api/orders");
        assert_eq!(j("http://a/api/", "/orders"), "http://a/api/orders");
        assert_eq!(j("http://a/api", "/orders"), "http://a/api/orders");
        assert_eq!(j("http://a/api", "?q=1"), "http://a/api?q=1");
        assert_eq!(
            j("http://a/api", "orders?x=../y"),
            "http://a/api/orders?x=../y"
        );
        assert_eq!(j("http://a/api", ""), "http://a/api");
        assert_eq!(j("http://a", "x"), "http://a/x");
        assert_eq!(j("http://a/api", "a%20b"), "http://a/api/a%20b");
    }

    #[test]
    fn paths_that_leave_the_base_are_refused() {
        for bad in [
            "../admin/delete",
            "/../admin",
            "x/../../admin",
            "%2e%2e/admin",
            "%2E%2E/admin",
            ".%2e/admin",
            "%252e%252e/admin",
            "%25252e%25252e/admin",
            "..\\admin",
            "x%5c..%5cadmin",
            "..%2fadmin",
            "%2e%2e%2fadmin",
            "a\r\nHost: evil",
            "a%0d%0aX: 1",
        ] {
            assert!(
                join_url("http://a/api/x", bad).is_err(),
                "{bad} was allowed"
            );
        }
        // The host cannot be changed either.
        assert!(join_url("http://a", "@evil.com/x").is_ok_and(|u| u.starts_with("http://a/")));
        assert_eq!(
            url::Url::parse(&join_url("http://a/api", "//evil.com/x").unwrap())
                .unwrap()
                .host_str(),
            Some("a")
        );
    }

    #[test]
    fn ftp_files_stay_in_the_folder() {
        assert_eq!(join_path("/in/", "f.txt").unwrap(), "/in/f.txt");
        assert_eq!(join_path("", "f.txt").unwrap(), "/f.txt");
        assert_eq!(join_path("/in", "/abs.txt").unwrap(), "/in/abs.txt");
        assert_eq!(join_path("/in", "sub/f.txt").unwrap(), "/in/sub/f.txt");
        assert_eq!(join_path("/in%20box", "f").unwrap(), "/in box/f");
        for bad in [
            "../etc/passwd",
            "/../x",
            "a/../../x",
            "%2e%2e/x",
            "..\\x",
            "a\nb",
            "",
        ] {
            assert!(join_path("/in", bad).is_err(), "{bad:?} was allowed");
        }
        assert_eq!(decode_component("a%20b+c"), "a b+c");
    }
}
