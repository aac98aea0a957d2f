//! The environment of an exec'd process.

use crate::exec::spawn::SpawnError;
use crate::user::User;
use supermachine_protocol::{EnvMode, ErrorKind, ExecRequest};

/// Environment every exec starts from in [`EnvMode::Extend`]; request
/// entries override or extend it.
pub const BASE_ENV: &[(&str, &str)] = &[
    (
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ),
    ("HOME", "/root"),
    ("TERM", "linux"),
];

/// TERM of a PTY exec (unless the request sets one). The PTY's other end
/// is the host user's terminal emulator, which speaks xterm (what
/// `docker exec -t` and ssh assume too), not the Linux console that
/// "linux" describes. Without a PTY, TERM stays "linux": nothing renders
/// the output as a terminal, and existing callers rely on the value.
pub const PTY_TERM: &str = "xterm-256color";

/// The environment of the child: the base (with the user's HOME, and the
/// PTY's TERM) in `Extend` mode, nothing in `Replace` mode, then the
/// request's entries applied in order.
pub fn build_env(
    req: &ExecRequest,
    user: Option<&User>,
) -> Result<Vec<(String, String)>, SpawnError> {
    let mut env: Vec<(String, String)> = Vec::new();
    if req.env_mode == EnvMode::Extend {
        for (k, v) in BASE_ENV {
            let v = match (*k, user, req.pty) {
                ("HOME", Some(u), _) => u.home.as_str(),
                ("TERM", _, Some(_)) => PTY_TERM,
                _ => v,
            };
            env.push((k.to_string(), v.to_string()));
        }
    }
    for (k, v) in &req.env {
        if k.is_empty() || k.contains('=') {
            let message = format!("invalid environment variable name {k:?}");
            return Err(SpawnError::Refused(ErrorKind::BadRequest, message));
        }
        match env.iter_mut().find(|(key, _)| key == k) {
            Some(entry) => entry.1 = v.clone(),
            None => env.push((k.clone(), v.clone())),
        }
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(env: &[(&str, &str)]) -> ExecRequest {
        ExecRequest {
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    fn get<'a>(env: &'a [(String, String)], key: &str) -> Option<&'a str> {
        env.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    #[test]
    fn env_overrides_and_extends_the_base() {
        let env = build_env(&req(&[("HOME", "/home/x"), ("A", "1")]), None).unwrap_or_default();
        assert_eq!(get(&env, "HOME"), Some("/home/x"));
        assert_eq!(get(&env, "A"), Some("1"));
        assert_eq!(get(&env, "TERM"), Some("linux"));
        assert_eq!(env.iter().filter(|(k, _)| k == "HOME").count(), 1);
        assert!(matches!(
            build_env(&req(&[("A=B", "1")]), None),
            Err(SpawnError::Refused(ErrorKind::BadRequest, _))
        ));
    }

    #[test]
    fn env_follows_user_pty_and_replace_mode() {
        let user = User {
            uid: 1,
            gid: 1,
            groups: vec![1],
            home: "/home/u".into(),
        };
        let mut r = req(&[]);
        r.pty = Some(supermachine_protocol::WindowSize { rows: 1, cols: 1 });
        let env = build_env(&r, Some(&user)).unwrap_or_default();
        assert_eq!(get(&env, "HOME"), Some("/home/u"));
        assert_eq!(get(&env, "TERM"), Some(PTY_TERM));
        // The request still wins over the user's home.
        let env = build_env(&req(&[("HOME", "/h")]), Some(&user)).unwrap_or_default();
        assert_eq!(get(&env, "HOME"), Some("/h"));
        let mut r = req(&[("A", "1"), ("A", "2")]);
        r.env_mode = EnvMode::Replace;
        assert_eq!(
            build_env(&r, Some(&user)).unwrap_or_default(),
            vec![("A".to_string(), "2".to_string())]
        );
    }
}
