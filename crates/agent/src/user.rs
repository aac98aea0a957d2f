//! Resolving `ExecRequest::user` through the guest's /etc/passwd and
//! /etc/group.
//!
//! The agent is a static binary: glibc's NSS (`getpwnam`) would try to load
//! shared modules that a static binary cannot use, so the files are parsed
//! here. Semantics follow Docker (runc's `GetExecUser`):
//!
//! - `name` / `uid`: uid, primary gid and home from passwd; supplementary
//!   groups are the primary one plus every group listing the user's name as
//!   a member (what `initgroups` gives a login).
//! - `...:group` (name or gid): that group becomes the primary and only
//!   group; membership lists are not consulted.
//! - A numeric uid missing from passwd is allowed: gid 0 (unless given) and
//!   home `/`. A missing name is an error.

use std::path::Path;

/// The user database [`resolve`] reads, in the guest's root.
pub const PASSWD: &str = "/etc/passwd";
/// The group database [`resolve`] reads for supplementary groups and
/// `user:group` names.
pub const GROUP: &str = "/etc/group";

/// Credentials a child switches to before exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// User id for `setuid`.
    pub uid: u32,
    /// Primary group id for `setgid`.
    pub gid: u32,
    /// Supplementary groups (for `setgroups`), deduplicated.
    pub groups: Vec<u32>,
    /// Home directory from passwd, `/` when passwd gives none; becomes the
    /// child's `HOME` (see [`crate::env::build_env`]).
    pub home: String,
}

/// Why a user spec could not be resolved; the string is the message for
/// the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserError {
    /// A named user or group does not exist.
    NotFound(String),
    /// The spec itself is malformed.
    Invalid(String),
}

/// Resolves `spec` against the files of the running root.
pub fn resolve(spec: &str) -> Result<User, UserError> {
    resolve_in(spec, &read(PASSWD), &read(GROUP))
}

/// A missing or unreadable file reads as empty: minimal images often have
/// no /etc/passwd, and numeric users must still work there.
fn read(path: &str) -> String {
    std::fs::read(Path::new(path))
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: &'a str,
}

/// Lines worth parsing: no blanks, comments or NIS `+`/`-` entries.
fn records(text: &str) -> impl Iterator<Item = Vec<&str>> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with(['#', '+', '-']))
        .map(|l| l.split(':').collect())
}

fn passwd_entries(text: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    records(text).filter_map(|f| {
        Some(PasswdEntry {
            name: f.first()?,
            uid: f.get(2)?.parse().ok()?,
            gid: f.get(3)?.parse().ok()?,
            home: f.get(5).copied().unwrap_or(""),
        })
    })
}

fn group_entries(text: &str) -> impl Iterator<Item = GroupEntry<'_>> {
    records(text).filter_map(|f| {
        Some(GroupEntry {
            name: f.first()?,
            gid: f.get(2)?.parse().ok()?,
            members: f.get(3).copied().unwrap_or(""),
        })
    })
}

/// A numeric id, or `None` for a name. `u32::MAX` is refused: to the
/// set*id syscalls it means "leave unchanged".
fn numeric(s: &str, spec: &str) -> Result<Option<u32>, UserError> {
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(None);
    }
    match s.parse::<u32>() {
        Ok(id) if id != u32::MAX => Ok(Some(id)),
        _ => Err(UserError::Invalid(format!(
            "invalid id {s:?} in user {spec:?}"
        ))),
    }
}

/// [`resolve`] against the given contents of /etc/passwd and /etc/group
/// instead of the files, so the rules can be tested without a guest.
pub fn resolve_in(spec: &str, passwd: &str, group: &str) -> Result<User, UserError> {
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user_part.is_empty() || group_part == Some("") {
        return Err(UserError::Invalid(format!("invalid user {spec:?}")));
    }
    let entry = match numeric(user_part, spec)? {
        Some(uid) => passwd_entries(passwd).find(|e| e.uid == uid).ok_or(uid),
        None => match passwd_entries(passwd).find(|e| e.name == user_part) {
            Some(e) => Ok(e),
            None => {
                return Err(UserError::NotFound(format!(
                    "user {user_part:?} not found in {PASSWD}"
                )))
            }
        },
    };
    let (uid, gid, home, name) = match &entry {
        Ok(e) => (e.uid, e.gid, e.home, Some(e.name)),
        Err(uid) => (*uid, 0, "/", None),
    };
    let home = if home.is_empty() { "/" } else { home }.to_string();

    if let Some(g) = group_part {
        let gid = match numeric(g, spec)? {
            Some(gid) => gid,
            None => match group_entries(group).find(|e| e.name == g) {
                Some(e) => e.gid,
                None => {
                    return Err(UserError::NotFound(format!(
                        "group {g:?} not found in {GROUP}"
                    )))
                }
            },
        };
        return Ok(User {
            uid,
            gid,
            groups: vec![gid],
            home,
        });
    }

    let mut groups = vec![gid];
    if let Some(name) = name {
        for e in group_entries(group) {
            if e.members.split(',').any(|m| m.trim() == name) && !groups.contains(&e.gid) {
                groups.push(e.gid);
            }
        }
    }
    Ok(User {
        uid,
        gid,
        groups,
        home,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        # comment\n\
        daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
        broken line\n\
        app:x:1000:1000::/home/app:/bin/sh\n\
        nohome:x:1001:1001::\n";
    const GROUP: &str = "root:x:0:\n\
        daemon:x:1:\n\
        wheel:x:10:app,other\n\
        docker:x:999:other, app\n\
        app:x:1000:\n";

    fn resolve(spec: &str) -> Result<User, UserError> {
        resolve_in(spec, PASSWD, GROUP)
    }

    #[test]
    fn name_gives_passwd_ids_home_and_member_groups() {
        let u = resolve("app").unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!((u.uid, u.gid, u.home.as_str()), (1000, 1000, "/home/app"));
        assert_eq!(u.groups, vec![1000, 10, 999]);
        // A uid present in passwd behaves like its name.
        assert_eq!(resolve("1000"), Ok(u));
    }

    #[test]
    fn explicit_group_replaces_memberships() {
        let u = resolve("app:daemon").unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!((u.uid, u.gid, u.groups.clone()), (1000, 1, vec![1]));
        let u = resolve("1000:4242").unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!((u.gid, u.groups), (4242, vec![4242]));
    }

    #[test]
    fn unknown_numeric_uid_is_allowed_with_gid_0_and_root_home() {
        let u = resolve("4321").unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!((u.uid, u.gid, u.home.as_str()), (4321, 0, "/"));
        assert_eq!(u.groups, vec![0]);
        let u = resolve("4321:5").unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!((u.uid, u.gid), (4321, 5));
        let u = resolve("nohome").unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(u.home, "/");
    }

    #[test]
    fn unknown_names_and_bad_specs_are_errors() {
        assert_eq!(
            resolve("x"),
            Err(UserError::NotFound(
                "user \"x\" not found in /etc/passwd".into()
            ))
        );
        assert!(
            matches!(resolve("app:nogroup"), Err(UserError::NotFound(m)) if m.contains("/etc/group"))
        );
        for bad in ["", ":", "app:", ":0", "4294967295", "99999999999"] {
            assert!(
                matches!(resolve(bad), Err(UserError::Invalid(_))),
                "{bad:?}"
            );
        }
        // No files at all: numbers still work, names do not.
        assert!(resolve_in("7:8", "", "").is_ok());
        assert!(matches!(
            resolve_in("root", "", ""),
            Err(UserError::NotFound(_))
        ));
    }
}
