//! What a command in a VM runs with when the caller does not say: the
//! image config's Env, WorkingDir and User, and Docker's rules for the
//! command (Entrypoint + Cmd).
//!
//! These are applied on the host, through the same exec options a caller
//! sets explicitly (env, cwd, user), so the agent needs to know nothing of
//! images: it resolves a user name through the guest's own /etc/passwd and
//! /etc/group either way.

use crate::error::Error;
use serde::{Deserialize, Serialize};
use supermachine_oci::ImageConfig;

/// Defaults for every exec in a VM. An exec's own settings win: its
/// variables are applied after these, and its cwd and user replace these.
///
/// ```
/// use supermachine::ExecDefaults;
/// let d = ExecDefaults::default()
///     .with_env([("A".to_string(), "1".to_string())])
///     .with_env([("A".to_string(), "2".to_string()), ("B".to_string(), "3".to_string())]);
/// assert_eq!(d.env, [("A".into(), "2".into()), ("B".into(), "3".into())]);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecDefaults {
    /// Variables set on top of the agent's base environment (PATH, HOME,
    /// TERM), in order; a name appears once.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Working directory (the image's WorkingDir); `/` when `None`.
    #[serde(default)]
    pub cwd: Option<String>,
    /// User (the image's User): `name`, `uid`, `uid:gid` or `name:group`,
    /// resolved in the guest; root when `None`.
    #[serde(default)]
    pub user: Option<String>,
}

impl ExecDefaults {
    /// The defaults an image config asks for: its Env (`KEY=value`
    /// entries; an entry without `=` is ignored, as Docker does for config
    /// files), WorkingDir and User.
    ///
    /// ```
    /// use supermachine::{oci::ImageConfig, ExecDefaults};
    /// let config = ImageConfig {
    ///     env: vec!["PATH=/usr/local/bin:/usr/bin:/bin".into(), "LANG=C.UTF-8".into()],
    ///     working_dir: Some("/app".into()),
    ///     ..Default::default()
    /// };
    /// let defaults = ExecDefaults::from_config(&config);
    /// assert_eq!(defaults.env[1], ("LANG".into(), "C.UTF-8".into()));
    /// assert_eq!((defaults.cwd.as_deref(), defaults.user), (Some("/app"), None));
    /// ```
    pub fn from_config(config: &ImageConfig) -> ExecDefaults {
        let env = config
            .env
            .iter()
            .filter_map(|e| e.split_once('='))
            .filter(|(k, _)| !k.is_empty())
            .map(|(k, v)| (k.to_string(), v.to_string()));
        ExecDefaults {
            env: merge_env(&[], env),
            cwd: config.working_dir.clone(),
            user: config.user.clone(),
        }
    }

    /// These defaults with `overrides` applied: same-named variables are
    /// replaced in place, new ones appended.
    ///
    /// ```
    /// use supermachine::ExecDefaults;
    /// let base = ExecDefaults { env: vec![("LANG".into(), "C".into())], ..Default::default() };
    /// let d = base.with_env([
    ///     ("LANG".to_string(), "C.UTF-8".to_string()),
    ///     ("TZ".into(), "UTC".into()),
    /// ]);
    /// assert_eq!(d.env, [("LANG".into(), "C.UTF-8".into()), ("TZ".into(), "UTC".into())]);
    /// ```
    pub fn with_env(mut self, overrides: impl IntoIterator<Item = (String, String)>) -> Self {
        self.env = merge_env(&self.env, overrides);
        self
    }
}

/// `base` with `overrides` applied in order: a variable already present
/// takes the new value where it stands, a new one is appended. The result
/// names each variable once.
///
/// ```
/// let merged = supermachine::merge_env(
///     &[("PATH".into(), "/bin".into()), ("A".into(), "1".into())],
///     [("A".to_string(), "x".to_string()), ("B".to_string(), "2".to_string())],
/// );
/// assert_eq!(merged, [("PATH".into(), "/bin".into()), ("A".into(), "x".into()), ("B".into(), "2".into())]);
/// ```
pub fn merge_env(
    base: &[(String, String)],
    overrides: impl IntoIterator<Item = (String, String)>,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::with_capacity(base.len());
    for (k, v) in base.iter().cloned().chain(overrides) {
        match env.iter_mut().find(|(key, _)| *key == k) {
            Some(entry) => entry.1 = v,
            None => env.push((k, v)),
        }
    }
    env
}

/// The command Docker would run: the Entrypoint followed by `args` when
/// given (they replace Cmd), else by Cmd. `image` names the image in the
/// error when there is nothing to run.
///
/// ```
/// use supermachine::oci::ImageConfig;
/// let config = ImageConfig {
///     entrypoint: Some(vec!["/bin/tini".into(), "--".into()]),
///     cmd: Some(vec!["nginx".into()]),
///     ..Default::default()
/// };
/// let run = |args: &[&str]| {
///     let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
///     supermachine::docker_command(Some(&config), &args, "nginx").unwrap()
/// };
/// assert_eq!(run(&[]), ["/bin/tini", "--", "nginx"]);
/// assert_eq!(run(&["sh"]), ["/bin/tini", "--", "sh"]);
/// ```
pub fn docker_command(
    config: Option<&ImageConfig>,
    args: &[String],
    image: &str,
) -> Result<Vec<String>, Error> {
    let entrypoint = config
        .and_then(|c| c.entrypoint.clone())
        .unwrap_or_default();
    let cmd = if args.is_empty() {
        config.and_then(|c| c.cmd.clone()).unwrap_or_default()
    } else {
        args.to_vec()
    };
    let argv: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if argv.is_empty() {
        return Err(Error::NoCommand {
            image: image.to_string(),
        });
    }
    Ok(argv)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn config(entrypoint: Option<&[&str]>, cmd: Option<&[&str]>) -> ImageConfig {
        ImageConfig {
            entrypoint: entrypoint.map(s),
            cmd: cmd.map(s),
            ..Default::default()
        }
    }

    #[test]
    fn args_replace_cmd_and_keep_the_entrypoint() {
        let c = config(Some(&["/entry", "-x"]), Some(&["default", "arg"]));
        assert_eq!(
            docker_command(Some(&c), &[], "i").unwrap(),
            s(&["/entry", "-x", "default", "arg"])
        );
        assert_eq!(
            docker_command(Some(&c), &s(&["echo", "hi"]), "i").unwrap(),
            s(&["/entry", "-x", "echo", "hi"])
        );
    }

    #[test]
    fn cmd_alone_or_entrypoint_alone() {
        let cmd_only = config(None, Some(&["sh", "-c", "echo"]));
        assert_eq!(
            docker_command(Some(&cmd_only), &[], "i").unwrap(),
            s(&["sh", "-c", "echo"])
        );
        assert_eq!(
            docker_command(Some(&cmd_only), &s(&["ls"]), "i").unwrap(),
            s(&["ls"])
        );
        let entry_only = config(Some(&["/app"]), None);
        assert_eq!(
            docker_command(Some(&entry_only), &[], "i").unwrap(),
            s(&["/app"])
        );
        // An empty Cmd is "no arguments", not "unset": still runs the entrypoint.
        let empty_cmd = config(Some(&["/app"]), Some(&[]));
        assert_eq!(
            docker_command(Some(&empty_cmd), &[], "i").unwrap(),
            s(&["/app"])
        );
    }

    #[test]
    fn nothing_to_run_is_a_clear_error() {
        for c in [
            None,
            Some(config(None, None)),
            Some(config(Some(&[]), Some(&[]))),
        ] {
            let e = docker_command(c.as_ref(), &[], "example/app:1").unwrap_err();
            assert!(matches!(e, Error::NoCommand { .. }), "{e:?}");
            let text = e.to_string();
            assert!(
                text.contains("example/app:1") && text.contains("--"),
                "{text}"
            );
        }
    }

    #[test]
    fn image_env_then_overrides() {
        let c = ImageConfig {
            env: s(&[
                "PATH=/usr/bin:/bin",
                "A=1",
                "EMPTY=",
                "NOEQUALS",
                "=bad",
                "B=x=y",
            ]),
            working_dir: Some("/srv".into()),
            user: Some("app:staff".into()),
            ..Default::default()
        };
        let d = ExecDefaults::from_config(&c);
        assert_eq!(d.cwd.as_deref(), Some("/srv"));
        assert_eq!(d.user.as_deref(), Some("app:staff"));
        let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        assert_eq!(
            d.env,
            pairs(&[
                ("PATH", "/usr/bin:/bin"),
                ("A", "1"),
                ("EMPTY", ""),
                ("B", "x=y")
            ])
        );
        let d = d.with_env(pairs(&[("A", "2"), ("C", "3"), ("A", "4")]));
        assert_eq!(
            d.env,
            pairs(&[
                ("PATH", "/usr/bin:/bin"),
                ("A", "4"),
                ("EMPTY", ""),
                ("B", "x=y"),
                ("C", "3")
            ])
        );
    }

    #[test]
    fn duplicate_names_in_the_image_keep_the_last_value() {
        let c = ImageConfig {
            env: s(&["A=1", "A=2"]),
            ..Default::default()
        };
        assert_eq!(
            ExecDefaults::from_config(&c).env,
            vec![("A".to_string(), "2".to_string())]
        );
    }
}
