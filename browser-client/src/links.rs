//! What a meeting link says: the page's path (who joins which meeting), its
//! query and fragment (token, end-to-end encryption, loopback-only server
//! overrides), and the server endpoints derived from them. Pure string work,
//! so it builds and is tested natively too.

/// The meeting a page URL names: `/meeting/<name>/<meeting-id>` gives the
/// display name and the meeting id (percent-escapes decoded).
pub fn meeting_from_path(path: &str) -> Option<(String, String)> {
    let rest = path.strip_prefix("/meeting/")?;
    let mut parts = rest.trim_end_matches('/').splitn(2, '/');
    let name = decode(parts.next()?);
    let id = decode(parts.next()?);
    (!name.is_empty() && !id.is_empty() && !id.contains('/')).then_some((name, id))
}

/// Decodes `%XX` escapes (and leaves anything malformed as it is).
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// The token a meeting link carries: `#token=…` (kept out of server logs and
/// Referer headers, so preferred) or `?token=…`.
pub fn token_from(search: &str, hash: &str) -> Option<String> {
    [hash.trim_start_matches('#'), search.trim_start_matches('?')]
        .iter()
        .flat_map(|part| part.split('&'))
        .find_map(|kv| kv.strip_prefix("token="))
        .map(decode)
        .filter(|t| !t.is_empty())
}

/// Whether a meeting link asks for end-to-end encryption (`#e2ee=1` or `?e2ee=1`).
pub fn e2ee_in_link(search: &str, hash: &str) -> bool {
    [hash.trim_start_matches('#'), search.trim_start_matches('?')]
        .iter()
        .flat_map(|part| part.split('&'))
        .any(|kv| kv == "e2ee=1")
}

/// False when the page's query turns simulcast off (`?simulcast=0`): the
/// camera is then sent as one encoding, as to a server without `sfu.1`.
pub fn simulcast_in_link(search: &str) -> bool {
    !search
        .trim_start_matches('?')
        .split('&')
        .any(|kv| kv == "simulcast=0")
}

/// True for the browser engine whose camera goes out as one encoding, as
/// with `?simulcast=0`: WebKit (not Chromium, whose user agent also names
/// AppleWebKit). With three camera encoders running, WebKitGTK's page
/// stopped sending its shared screen (the Playwright WebKit test); until
/// that is understood, WebKit sends one.
pub fn one_encoder_only(user_agent: &str) -> bool {
    user_agent.contains("AppleWebKit")
        && !user_agent.contains("Chrome/")
        && !user_agent.contains("Chromium/")
}

/// The number of remote tiles a page of the grid holds when the link says
/// (`?page_size=N`, 1 to 100); otherwise as many as fit the window.
pub fn page_size_in_link(search: &str) -> Option<usize> {
    search
        .trim_start_matches('?')
        .split('&')
        .find_map(|kv| kv.strip_prefix("page_size="))
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|n| (1..=100).contains(n))
}

/// A WebSocket URL given in the page's query (`?server=ws://…`), honoured
/// only when the page and that server are both on loopback: for local
/// development and the conformance runner, never a way for a link to send
/// someone's token elsewhere.
pub fn server_override(page_host: &str, search: &str) -> Option<String> {
    loopback_override(page_host, search, "server=", &["ws://", "wss://"])
}

/// A WebTransport URL given in the page's query (`?wt=https://…`), on the
/// same loopback-only terms as [`server_override`]: the tests put an
/// impairing relay between the browser and the server this way. The
/// server's certificate hashes still come from the page's own server.
pub fn webtransport_override(page_host: &str, search: &str) -> Option<String> {
    loopback_override(page_host, search, "wt=", &["https://"])
}

/// The URL after `key` in `search`, when it has one of `schemes` and both
/// it and the page are on loopback.
fn loopback_override(page_host: &str, search: &str, key: &str, schemes: &[&str]) -> Option<String> {
    let loopback = |host: &str| {
        let h = host.rsplit_once(':').map_or(host, |(h, _)| h);
        matches!(h, "127.0.0.1" | "localhost" | "[::1]")
    };
    if !loopback(page_host) {
        return None;
    }
    let url = search
        .trim_start_matches('?')
        .split('&')
        .find_map(|kv| kv.strip_prefix(key))
        .map(decode)?;
    let rest = schemes.iter().find_map(|s| url.strip_prefix(s))?;
    let host = rest.split('/').next()?;
    loopback(host).then_some(url)
}

/// The WebSocket endpoint of the server that served the page.
pub fn ws_url(protocol: &str, host: &str) -> String {
    let scheme = if protocol == "https:" { "wss" } else { "ws" };
    format!("{scheme}://{host}/convene/ws")
}

/// Bytes from hexadecimal.
pub fn hex_bytes(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| Some(hex(*s.as_bytes().get(i)?)? << 4 | hex(*s.as_bytes().get(i + 1)?)?))
        .collect()
}

/// The name and meeting this page's URL names, or empty ones.
pub fn page_meeting() -> (String, String) {
    web_sys::window()
        .and_then(|w| w.location().pathname().ok())
        .and_then(|p| meeting_from_path(&p))
        .unwrap_or_default()
}

/// Whether this page's link asks for end-to-end encryption.
pub fn e2ee_from_link() -> bool {
    web_sys::window().is_some_and(|w| {
        let l = w.location();
        e2ee_in_link(
            &l.search().unwrap_or_default(),
            &l.hash().unwrap_or_default(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simulcast_is_on_unless_the_link_turns_it_off() {
        assert!(simulcast_in_link(""));
        assert!(simulcast_in_link("?transport=websocket"));
        assert!(simulcast_in_link("?simulcast=1"));
        assert!(!simulcast_in_link("?simulcast=0"));
        assert!(!simulcast_in_link("?transport=websocket&simulcast=0"));
    }

    #[test]
    fn the_url_names_the_person_and_the_meeting() {
        assert_eq!(
            meeting_from_path("/meeting/Ann%20Lee/team.standup"),
            Some(("Ann Lee".into(), "team.standup".into()))
        );
        assert_eq!(meeting_from_path("/meeting/ann/"), None);
        assert_eq!(meeting_from_path("/"), None);
        assert_eq!(meeting_from_path("/meeting/a/b/c"), None);
    }

    #[test]
    fn a_link_carries_its_token_in_the_fragment_or_the_query() {
        assert_eq!(token_from("", "#token=a.b.c"), Some("a.b.c".into()));
        assert_eq!(token_from("?x=1&token=q%2Eb", ""), Some("q.b".into()));
        assert_eq!(
            token_from("?token=query", "#token=fragment"),
            Some("fragment".into()),
            "the fragment wins"
        );
        assert_eq!(token_from("?token=", ""), None);
        assert_eq!(token_from("", ""), None);
    }
    #[test]
    fn a_server_in_the_link_is_honoured_only_on_loopback() {
        let ws = "?server=ws%3A%2F%2F127.0.0.1%3A9%2Fconvene%2Fws";
        assert_eq!(
            server_override("127.0.0.1:8080", ws),
            Some("ws://127.0.0.1:9/convene/ws".into())
        );
        assert_eq!(
            server_override("meet.example.com", ws),
            None,
            "a public page"
        );
        assert_eq!(
            server_override("localhost:8080", "?server=wss://evil.example/convene/ws"),
            None,
            "a public target"
        );
        assert_eq!(
            server_override("127.0.0.1:8080", "?server=http://127.0.0.1:9"),
            None
        );
        assert_eq!(server_override("127.0.0.1:8080", ""), None);
    }

    #[test]
    fn a_webtransport_url_in_the_link_is_honoured_only_on_loopback() {
        let wt = "?join=1&wt=https://127.0.0.1:9/convene/wt";
        assert_eq!(
            webtransport_override("127.0.0.1:8080", wt),
            Some("https://127.0.0.1:9/convene/wt".into())
        );
        assert_eq!(webtransport_override("meet.example.com", wt), None);
        assert_eq!(
            webtransport_override("127.0.0.1:8080", "?wt=https://evil.example/convene/wt"),
            None
        );
        // Each key takes its own schemes only.
        assert_eq!(
            webtransport_override("127.0.0.1:8080", "?wt=ws://127.0.0.1:9/convene/ws"),
            None
        );
        assert_eq!(server_override("127.0.0.1:8080", wt), None);
    }

    #[test]
    fn hex_hashes_become_bytes() {
        assert_eq!(hex_bytes("00ff10"), Some(vec![0, 255, 16]));
        assert_eq!(hex_bytes("abc"), None);
        assert_eq!(hex_bytes("zz"), None);
    }

    #[test]
    fn the_websocket_follows_the_page_scheme() {
        assert_eq!(ws_url("https:", "x:443"), "wss://x:443/convene/ws");
        assert_eq!(
            ws_url("http:", "127.0.0.1:8080"),
            "ws://127.0.0.1:8080/convene/ws"
        );
    }

    #[test]
    fn a_link_may_set_the_page_size() {
        assert_eq!(page_size_in_link("?page_size=3"), Some(3));
        assert_eq!(page_size_in_link("?join=1&page_size=12"), Some(12));
        assert_eq!(page_size_in_link("?page_size=0"), None);
        assert_eq!(page_size_in_link("?page_size=x"), None);
        assert_eq!(page_size_in_link(""), None);
    }

    #[test]
    fn webkit_alone_sends_one_encoding() {
        let minibrowser = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/16.0 Safari/605.1.15";
        let chromium = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
        let firefox = "Mozilla/5.0 (X11; Linux x86_64; rv:115.0) Gecko/20100101 Firefox/115.0";
        assert!(one_encoder_only(minibrowser));
        assert!(!one_encoder_only(chromium));
        assert!(!one_encoder_only(firefox));
    }
}
