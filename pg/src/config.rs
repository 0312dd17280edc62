//! Connection settings from a `postgres://` URL, libpq's form:
//! `postgres://[user[:password]@]host[:port][,host[:port]…][/dbname][?key=value&…]`.
//!
//! Every query key is either understood or refused by name: a typo must not silently
//! connect without the setting it meant.

/// One server a URL names, tried in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub name: String,
    pub port: u16,
}

/// Which server of a multi-host URL is acceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetSessionAttrs {
    /// The first server that accepts the login.
    Any,
    /// The first that accepts writes (not a hot standby): after a failover, the promoted one.
    ReadWrite,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub hosts: Vec<Host>,
    pub user: String,
    pub password: Option<String>,
    pub dbname: Option<String>,
    pub target_session_attrs: TargetSessionAttrs,
    /// Startup parameters sent as they are: `application_name`, `options` and server
    /// settings such as `statement_timeout` (Postgres applies any setting named in the
    /// startup packet to the session).
    pub params: Vec<(String, String)>,
}

/// Startup settings a URL may carry, besides the connection keys handled by name.
const SESSION_PARAMS: [&str; 4] = [
    "application_name",
    "options",
    "statement_timeout",
    "client_connection_check_interval",
];

const DEFAULT_PORT: u16 = 5432;

impl Config {
    /// Parses a URL. Errors name the part or key at fault and never repeat the password.
    pub fn parse(url: &str) -> Result<Config, String> {
        let rest = (url.strip_prefix("postgres://"))
            .or_else(|| url.strip_prefix("postgresql://"))
            .ok_or("must start with postgres:// or postgresql://")?;
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, dbname) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, hostlist) = authority.rsplit_once('@').unwrap_or(("", authority));
        let (user, password) = match userinfo.split_once(':') {
            Some((user, password)) => (decode(user)?, Some(decode(password)?)),
            None => (decode(userinfo)?, None),
        };
        let mut config = Config {
            hosts: parse_hosts(hostlist)?,
            user: if user.is_empty() { "postgres".into() } else { user },
            password,
            dbname: (!dbname.is_empty()).then(|| decode(dbname)).transpose()?,
            target_session_attrs: TargetSessionAttrs::Any,
            params: Vec::new(),
        };
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            config.apply(&key, &value)?;
        }
        Ok(config)
    }

    fn apply(&mut self, key: &str, value: &str) -> Result<(), String> {
        match key {
            "user" => self.user = value.into(),
            "password" => self.password = Some(value.into()),
            "dbname" => self.dbname = Some(value.into()),
            "host" => self.hosts = parse_hosts(value)?,
            "port" => {
                let port = parse_port(value)?;
                self.hosts.iter_mut().for_each(|host| host.port = port);
            }
            "sslmode" => match value {
                // No TLS yet: `prefer` and `allow` fall back to plain, as libpq does when
                // the server or client cannot do TLS.
                "disable" | "allow" | "prefer" => {}
                "require" | "verify-ca" | "verify-full" => {
                    return Err(format!(
                        "sslmode={value} is not supported yet (no TLS): use sslmode=disable or prefer"
                    ));
                }
                _ => return Err(format!("sslmode={value} is not a valid sslmode")),
            },
            "target_session_attrs" => {
                self.target_session_attrs = match value {
                    "any" => TargetSessionAttrs::Any,
                    "read-write" => TargetSessionAttrs::ReadWrite,
                    _ => {
                        return Err(format!(
                            "target_session_attrs={value} is not supported: use any or read-write"
                        ));
                    }
                }
            }
            // The driver sets no timers: whoever connects bounds the attempt (percore:
            // database.connect_timeout_ms). Accepting the key would promise what nothing does.
            "connect_timeout" => {
                return Err("connect_timeout is not read from the URL: the caller bounds connecting".into());
            }
            _ if SESSION_PARAMS.contains(&key) => self.set_param(key, value),
            _ => return Err(format!("unknown parameter {key:?}")),
        }
        Ok(())
    }

    /// Sets (or replaces) a startup parameter.
    pub fn set_param(&mut self, key: &str, value: &str) {
        match self.params.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value.into(),
            None => self.params.push((key.into(), value.into())),
        }
    }

    pub fn param(&self, key: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

fn parse_hosts(list: &str) -> Result<Vec<Host>, String> {
    if list.is_empty() {
        return Ok(vec![Host {
            name: "localhost".into(),
            port: DEFAULT_PORT,
        }]);
    }
    list.split(',')
        .map(|entry| {
            let (name, port) = match entry.strip_prefix('[') {
                // [v6]:port
                Some(v6) => {
                    let (name, after) = v6
                        .split_once(']')
                        .ok_or_else(|| format!("host {entry:?} lacks its ]"))?;
                    (name, after.strip_prefix(':'))
                }
                None => match entry.rsplit_once(':') {
                    Some((name, port)) => (name, Some(port)),
                    None => (entry, None),
                },
            };
            if name.is_empty() {
                return Err("a host is empty".to_string());
            }
            if name.starts_with('/') || name.contains("%2F") || name.contains("%2f") {
                return Err("unix-socket hosts are not supported; use host=127.0.0.1".into());
            }
            Ok(Host {
                name: decode(name)?,
                port: port.map(parse_port).transpose()?.unwrap_or(DEFAULT_PORT),
            })
        })
        .collect()
}

fn parse_port(text: &str) -> Result<u16, String> {
    match text.parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(format!("port {text:?} is not a port number")),
    }
}

fn decode(text: &str) -> Result<String, String> {
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .map(|decoded| decoded.into_owned())
        .map_err(|_| "a percent-encoded part is not UTF-8".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_url_parses() {
        let config = Config::parse("postgres://bob:p%40ss@db1:6000,db2/app?target_session_attrs=read-write&application_name=x&statement_timeout=5000").unwrap();
        assert_eq!(config.user, "bob");
        assert_eq!(config.password.as_deref(), Some("p@ss"));
        assert_eq!(config.dbname.as_deref(), Some("app"));
        assert_eq!(
            config.hosts,
            vec![
                Host {
                    name: "db1".into(),
                    port: 6000
                },
                Host {
                    name: "db2".into(),
                    port: 5432
                }
            ]
        );
        assert_eq!(config.target_session_attrs, TargetSessionAttrs::ReadWrite);
        assert_eq!(config.param("application_name"), Some("x"));
        assert_eq!(config.param("statement_timeout"), Some("5000"));
    }

    #[test]
    fn tls_modes_are_refused_by_name_and_plain_ones_accepted() {
        for mode in ["require", "verify-full", "verify-ca"] {
            let error = Config::parse(&format!("postgres://h/db?sslmode={mode}")).unwrap_err();
            assert!(error.contains(&format!("sslmode={mode}")), "{error}");
        }
        for mode in ["disable", "prefer"] {
            assert!(Config::parse(&format!("postgres://h/db?sslmode={mode}")).is_ok());
        }
    }

    #[test]
    fn bad_parts_are_named_and_the_password_is_not_repeated() {
        assert!(Config::parse("mysql://h").is_err());
        let error = Config::parse("postgres://u:secret@h:notaport/db").unwrap_err();
        assert!(error.contains("notaport") && !error.contains("secret"), "{error}");
        assert!(
            Config::parse("postgres://h/db?colour=blue")
                .unwrap_err()
                .contains("colour")
        );
        assert!(Config::parse("postgres://h/db?target_session_attrs=standby").is_err());
        let error = Config::parse("postgres://h/db?connect_timeout=5").unwrap_err();
        assert!(error.contains("connect_timeout"), "{error}");
        assert!(Config::parse("postgres://%2Fvar%2Frun/db").is_err());
    }

    #[test]
    fn defaults() {
        let config = Config::parse("postgres://").unwrap();
        assert_eq!(config.user, "postgres");
        assert_eq!(
            config.hosts,
            vec![Host {
                name: "localhost".into(),
                port: 5432
            }]
        );
        assert_eq!(config.target_session_attrs, TargetSessionAttrs::Any);
        let v6 = Config::parse("postgres://u@[::1]:5433/db").unwrap();
        assert_eq!(
            v6.hosts,
            vec![Host {
                name: "::1".into(),
                port: 5433
            }]
        );
    }
}
