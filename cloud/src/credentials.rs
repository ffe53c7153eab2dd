//! Credentials and region from the standard AWS chain, as the AWS CLI reads them: the environment
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION` or
//! `AWS_DEFAULT_REGION`), then the shared files (`~/.aws/credentials` and `~/.aws/config`, or
//! `AWS_SHARED_CREDENTIALS_FILE` and `AWS_CONFIG_FILE`) for the profile `AWS_PROFILE` names (else
//! `default`). Keys are never logged: `Credentials`' Debug output redacts them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use aws_credential_types::Credentials;

/// Where the chain looks: the process environment (a fixed map in the tests).
pub trait Environment {
    fn var(&self, name: &str) -> Option<String>;
}

pub struct ProcessEnvironment;

impl Environment for ProcessEnvironment {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

pub fn credentials(env: &dyn Environment) -> Result<Credentials> {
    if let (Some(id), Some(secret)) = (
        env.var("AWS_ACCESS_KEY_ID"),
        env.var("AWS_SECRET_ACCESS_KEY"),
    ) {
        return Ok(Credentials::new(
            id,
            secret,
            env.var("AWS_SESSION_TOKEN"),
            None,
            "environment",
        ));
    }
    let profile = profile(env);
    for (file, section) in [
        (credentials_file(env), profile.clone()),
        (config_file(env), config_section(&profile)),
    ] {
        let Some(file) = file else { continue };
        let values = read_section(&file, &section)?;
        if let (Some(id), Some(secret)) = (
            values.get("aws_access_key_id"),
            values.get("aws_secret_access_key"),
        ) {
            return Ok(Credentials::new(
                id,
                secret,
                values.get("aws_session_token").cloned(),
                None,
                "shared file",
            ));
        }
    }
    bail!(
        "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or give profile {profile:?} \
         keys in ~/.aws/credentials"
    )
}

/// The region: the command line's, else the environment's, else the profile's in the config file.
pub fn region(explicit: Option<&str>, env: &dyn Environment) -> Result<String> {
    if let Some(region) = explicit {
        return Ok(region.to_owned());
    }
    if let Some(region) = env
        .var("AWS_REGION")
        .or_else(|| env.var("AWS_DEFAULT_REGION"))
    {
        return Ok(region);
    }
    if let Some(file) = config_file(env) {
        if let Some(region) = read_section(&file, &config_section(&profile(env)))?.remove("region")
        {
            return Ok(region);
        }
    }
    bail!(
        "no AWS region: pass --region, set AWS_REGION, or give the profile a region in ~/.aws/config"
    )
}

fn profile(env: &dyn Environment) -> String {
    env.var("AWS_PROFILE")
        .unwrap_or_else(|| "default".to_owned())
}

/// The config file names profiles `[profile NAME]`, except `[default]`.
fn config_section(profile: &str) -> String {
    if profile == "default" {
        profile.to_owned()
    } else {
        format!("profile {profile}")
    }
}

fn credentials_file(env: &dyn Environment) -> Option<PathBuf> {
    env.var("AWS_SHARED_CREDENTIALS_FILE")
        .map(PathBuf::from)
        .or_else(|| Some(PathBuf::from(env.var("HOME")?).join(".aws/credentials")))
}

fn config_file(env: &dyn Environment) -> Option<PathBuf> {
    env.var("AWS_CONFIG_FILE")
        .map(PathBuf::from)
        .or_else(|| Some(PathBuf::from(env.var("HOME")?).join(".aws/config")))
}

/// The `key = value` lines of one `[section]` of an AWS INI file; nothing if the file does not exist.
fn read_section(file: &Path, section: &str) -> Result<BTreeMap<String, String>> {
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", file.display())),
    };
    let mut values = BTreeMap::new();
    let mut inside = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = name.trim() == section;
        } else if inside {
            if let Some((key, value)) = line.split_once('=') {
                values.insert(key.trim().to_owned(), value.trim().to_owned());
            }
        }
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Environment for BTreeMap<&str, &str> {
        fn var(&self, name: &str) -> Option<String> {
            self.get(name).map(|v| (*v).to_owned())
        }
    }

    #[test]
    fn the_environment_comes_before_the_files() {
        let env = BTreeMap::from([
            ("AWS_ACCESS_KEY_ID", "AKID"),
            ("AWS_SECRET_ACCESS_KEY", "SECRET"),
            ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent"),
        ]);
        let creds = credentials(&env).unwrap();
        assert_eq!(creds.access_key_id(), "AKID");
        assert!(!format!("{creds:?}").contains("SECRET"));
    }

    #[test]
    fn profiles_come_from_the_shared_files() {
        let dir = tempfile::tempdir().unwrap();
        let creds_file = dir.path().join("credentials");
        let config = dir.path().join("config");
        std::fs::write(
            &creds_file,
            "[default]\naws_access_key_id = D\naws_secret_access_key = DS\n\n[video]\naws_access_key_id = V\naws_secret_access_key = VS\n",
        )
        .unwrap();
        std::fs::write(
            &config,
            "[default]\nregion = us-east-1\n[profile video]\nregion = eu-west-1\n",
        )
        .unwrap();
        let (c, f) = (creds_file.to_str().unwrap(), config.to_str().unwrap());
        let mut env = BTreeMap::from([("AWS_SHARED_CREDENTIALS_FILE", c), ("AWS_CONFIG_FILE", f)]);
        assert_eq!(credentials(&env).unwrap().access_key_id(), "D");
        assert_eq!(region(None, &env).unwrap(), "us-east-1");
        env.insert("AWS_PROFILE", "video");
        assert_eq!(credentials(&env).unwrap().access_key_id(), "V");
        assert_eq!(region(None, &env).unwrap(), "eu-west-1");
        assert_eq!(region(Some("ap-south-1"), &env).unwrap(), "ap-south-1");
        env.insert("AWS_PROFILE", "nobody");
        let err = credentials(&env).unwrap_err().to_string();
        assert!(err.contains("\"nobody\""), "{err}");
    }
}
