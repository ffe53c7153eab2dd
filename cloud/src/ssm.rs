//! SSM Parameter Store: where a cloud host's layer (with its secrets) waits, encrypted with the
//! account's KMS key, for the instance to read it at boot with its own role.

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::client::{Aws, Request, Service};

/// A standard parameter holds 4 KiB, an advanced one 8 KiB.
const STANDARD_MAX: usize = 4096;
const ADVANCED_MAX: usize = 8192;

fn call(aws: &Aws, action: &str, body: &Value) -> Result<Value> {
    let body = serde_json::to_vec(body)?;
    aws.call(&Request {
        service: Service::Ssm,
        method: "POST",
        path: "/".to_owned(),
        headers: vec![
            ("content-type", "application/x-amz-json-1.1".to_owned()),
            ("x-amz-target", format!("AmazonSSM.{action}")),
        ],
        body: &body,
        body_sha256: None,
    })
    .with_context(|| format!("SSM {action}"))?
    .json()
}

/// Writes `value` as a SecureString at `name`, replacing what was there; the advanced tier only when
/// the value needs it.
pub fn put_secure(aws: &Aws, name: &str, value: &str, description: &str) -> Result<()> {
    let tier = match value.len() {
        n if n <= STANDARD_MAX => "Standard",
        n if n <= ADVANCED_MAX => "Advanced",
        n => bail!("{name}: {n} bytes do not fit in an SSM parameter ({ADVANCED_MAX} at most)"),
    };
    call(
        aws,
        "PutParameter",
        &json!({
            "Name": name,
            "Value": value,
            "Type": "SecureString",
            "Tier": tier,
            "Overwrite": true,
            "Description": description,
        }),
    )?;
    Ok(())
}

/// The decrypted value at `name`.
pub fn get_decrypted(aws: &Aws, name: &str) -> Result<String> {
    let answer = call(
        aws,
        "GetParameter",
        &json!({ "Name": name, "WithDecryption": true }),
    )?;
    answer["Parameter"]["Value"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("SSM GetParameter {name}: no value"))
}

/// Deletes `name`; a parameter that is not there is no error.
pub fn delete(aws: &Aws, name: &str) -> Result<()> {
    match call(aws, "DeleteParameter", &json!({ "Name": name })) {
        Err(e) if format!("{e:#}").contains("ParameterNotFound") => Ok(()),
        other => other.map(drop),
    }
}
