//! Database URLs, libpq style: one or several hosts (`postgres://u@h1:5432,h2:5432/db`) and
//! `target_session_attrs`. sqlx reads a single-host URL only, so the host list is split off
//! here and each host gets its own connect options, in the order given.

use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;

/// A parsed `database.url` or `database.direct_url`.
#[derive(Clone, Debug)]
pub struct DatabaseUrl {
    /// One set of connect options per host, in the order the URL lists them.
    pub hosts: Vec<PgConnectOptions>,
    /// The URL with its password hidden, for messages and logs.
    pub shown: String,
}

const DEFAULT_PORT: u16 = 5432;
/// The longest host name DNS allows.
const MAX_HOST_LEN: usize = 253;

impl DatabaseUrl {
    /// The same hosts, connected to as a transaction pooler needs: no statement cache (a
    /// cached statement lives on one server connection, and the next transaction may get
    /// another) and no `extra_float_digits` startup parameter (PgBouncer refuses parameters
    /// it does not know unless told to ignore them).
    pub fn for_transaction_pooler(mut self) -> DatabaseUrl {
        self.hosts = self
            .hosts
            .into_iter()
            .map(|host| host.statement_cache_capacity(0).extra_float_digits(None))
            .collect();
        self
    }
}

/// Parses `raw`; an error names `setting` and the part that is wrong.
pub fn parse(raw: &str, setting: &str) -> Result<DatabaseUrl, String> {
    let raw = raw.trim();
    // Said by position, not shown: a terminal would act on an escape.
    if let Some(at) = raw.chars().position(crate::domain::unsafe_in_id) {
        return Err(format!(
            "{setting} holds a control or invisible character (character {}); retype it",
            at + 1
        ));
    }
    let (scheme, rest) = raw
        .split_once("://")
        .ok_or_else(|| format!("{setting} is not a URL: it should look like postgres://user:password@host:5432/database"))?;
    if !matches!(scheme, "postgres" | "postgresql") {
        return Err(format!(
            "{setting} must start with postgres:// or postgresql://, not {scheme}://"
        ));
    }
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let (userinfo, hostspec) = match authority.rsplit_once('@') {
        Some((user, hosts)) => (Some(user), hosts),
        None => (None, authority),
    };
    let (path, query) = match tail.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (tail, None),
    };
    let mut kept_query = Vec::new();
    for pair in query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter(|p| !p.is_empty())
    {
        match pair.split_once('=') {
            Some(("target_session_attrs", value)) => check_session_attrs(value, setting)?,
            _ => kept_query.push(pair),
        }
    }
    let hosts = if hostspec.is_empty() {
        Vec::new()
    } else {
        hostspec
            .split(',')
            .enumerate()
            .map(|(i, host)| split_host(host, i + 1, setting))
            .collect::<Result<Vec<_>, _>>()?
    };
    let single = |host: Option<&(String, u16)>| {
        let mut url = format!("{scheme}://");
        if let Some(user) = userinfo {
            url.push_str(user);
            url.push('@');
        }
        if let Some((host, port)) = host {
            match host.contains(':') {
                true => url.push_str(&format!("[{host}]:{port}")),
                false => url.push_str(&format!("{host}:{port}")),
            }
        }
        url.push_str(path);
        if !kept_query.is_empty() {
            url.push('?');
            url.push_str(&kept_query.join("&"));
        }
        url
    };
    let base = PgConnectOptions::from_str(&single(hosts.first()))
        .map_err(|e| format!("{setting} is not a valid Postgres URL: {e}"))?;
    let hosts = match hosts.is_empty() {
        true => vec![base],
        false => hosts
            .iter()
            .map(|(host, port)| base.clone().host(host).port(*port))
            .collect(),
    };
    Ok(DatabaseUrl {
        hosts,
        shown: redact(scheme, userinfo, hostspec, path, query),
    })
}

/// `raw` naming database `name` instead, every host and parameter kept.
pub fn with_database(raw: &str, name: &str) -> String {
    let raw = raw.trim();
    let (scheme, rest) = raw.split_once("://").unwrap_or(("postgres", raw));
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match tail.split_once('?') {
        Some((_, query)) => format!("{scheme}://{authority}/{name}?{query}"),
        None => format!("{scheme}://{authority}/{name}"),
    }
}

/// keyrelay writes, so it always looks for a server that accepts writes; a URL asking for a
/// standby is a mistake worth saying.
fn check_session_attrs(value: &str, setting: &str) -> Result<(), String> {
    match value {
        "read-write" | "primary" | "any" => Ok(()),
        other => Err(format!(
            "{setting}: target_session_attrs={other} cannot work: keyrelay writes, so it needs a server that accepts writes; use target_session_attrs=read-write"
        )),
    }
}

/// `host[:port]` or `[v6]:port`, the `n`th in the list.
fn split_host(spec: &str, n: usize, setting: &str) -> Result<(String, u16), String> {
    let (host, port) = if let Some(v6) = spec.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(|| {
            format!("host {n} of {setting} (`{spec}`) opens a [ but does not close it")
        })?;
        (host, after.strip_prefix(':'))
    } else {
        match spec.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (spec, None),
        }
    };
    if host.is_empty() {
        return Err(format!(
            "host {n} of {setting} is empty; list hosts as host1:5432,host2:5432"
        ));
    }
    if host.len() > MAX_HOST_LEN {
        return Err(format!(
            "host {n} of {setting} is {} characters long; a host name has at most {MAX_HOST_LEN}",
            host.len()
        ));
    }
    let port = match port {
        None | Some("") => DEFAULT_PORT,
        Some(port) => port.parse().map_err(|_| {
            format!("the port of host {n} ({host}) in {setting} is not a port number: `{port}`")
        })?,
    };
    Ok((host.to_string(), port))
}

/// The URL as given, with the password (in the user part or a `password=` parameter) hidden.
fn redact(
    scheme: &str,
    userinfo: Option<&str>,
    hostspec: &str,
    path: &str,
    query: Option<&str>,
) -> String {
    let mut shown = format!("{scheme}://");
    if let Some(user) = userinfo {
        match user.split_once(':') {
            Some((name, _)) => shown.push_str(&format!("{name}:****@")),
            None => shown.push_str(&format!("{user}@")),
        }
    }
    shown.push_str(hostspec);
    shown.push_str(path);
    if let Some(query) = query {
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some(("password", _)) => "password=****".to_string(),
                _ => pair.to_string(),
            })
            .collect();
        shown.push('?');
        shown.push_str(&pairs.join("&"));
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(url: &DatabaseUrl) -> Vec<(String, u16)> {
        url.hosts
            .iter()
            .map(|o| (o.get_host().to_string(), o.get_port()))
            .collect()
    }

    #[test]
    fn one_host_reads_as_sqlx_reads_it() {
        let url = parse(
            "postgres://u:secret@db.example:6543/shop?sslmode=require",
            "database.url",
        )
        .unwrap();
        assert_eq!(hosts(&url), [("db.example".to_string(), 6543)]);
        assert_eq!(url.hosts[0].get_database(), Some("shop"));
        assert_eq!(url.hosts[0].get_username(), "u");
        assert_eq!(
            url.shown,
            "postgres://u:****@db.example:6543/shop?sslmode=require"
        );
    }

    #[test]
    fn several_hosts_keep_their_order_and_share_the_rest() {
        let url = parse(
            "postgresql://app:pw@h1:5432,h2,[::1]:5433/keyrelay?target_session_attrs=read-write&application_name=x",
            "database.url",
        )
        .unwrap();
        assert_eq!(
            hosts(&url),
            [
                ("h1".to_string(), 5432),
                ("h2".to_string(), 5432),
                ("::1".to_string(), 5433)
            ]
        );
        for host in &url.hosts {
            assert_eq!(host.get_database(), Some("keyrelay"));
            assert_eq!(host.get_username(), "app");
        }
        assert!(!url.shown.contains("pw"), "{}", url.shown);
        assert!(url.shown.contains("h1:5432,h2,[::1]:5433"), "{}", url.shown);
    }

    #[test]
    fn a_url_keyrelay_cannot_use_is_refused_naming_the_part() {
        let cases = [
            ("mysql://u@h/db", "mysql://"),
            ("h1:5432/db", "not a URL"),
            (
                "postgres://u@h1:5432,,h3/db",
                "host 2 of database.url is empty",
            ),
            ("postgres://u@h1:54x2/db", "port of host 1 (h1)"),
            ("postgres://u@h1,h2:99999/db", "port of host 2 (h2)"),
            ("postgres://u@[::1:5432/db", "opens a ["),
            (
                "postgres://u@h1,\u{1b}[31mh2/db",
                "control or invisible character (character 17)",
            ),
            (
                "postgres://u@h1/db?target_session_attrs=\u{202e}rw",
                "control or invisible",
            ),
            (
                "postgres://u@h1,h2/db?target_session_attrs=standby",
                "target_session_attrs=standby",
            ),
        ];
        for (raw, expected) in cases {
            let e = parse(raw, "database.url").unwrap_err();
            assert!(e.contains(expected), "{raw}: {e}");
            assert!(!e.chars().any(crate::domain::unsafe_in_id), "{e:?}");
        }
        let long = format!("postgres://u@h1,{}:5432/db", "a".repeat(5_000));
        let e = parse(&long, "database.url").unwrap_err();
        assert!(
            e.contains("host 2 of database.url is 5000 characters long"),
            "{e}"
        );
    }

    #[test]
    fn another_database_keeps_every_host_and_parameter() {
        assert_eq!(
            with_database(
                "postgres://u:p@h1:5432,h2/keyrelay?sslmode=require",
                "scratch"
            ),
            "postgres://u:p@h1:5432,h2/scratch?sslmode=require"
        );
        assert_eq!(with_database("postgres://h", "x"), "postgres://h/x");
    }

    #[test]
    fn a_password_in_the_query_is_hidden_too() {
        let url = parse("postgres://h/db?user=u&password=hunter2", "database.url").unwrap();
        assert_eq!(url.shown, "postgres://h/db?user=u&password=****");
    }
}
