//! The EC2 Query API calls lectern makes: form-encoded POSTs, XML answers.

use anyhow::{Context, Result, bail};

use crate::client::{Aws, Request, Service};

const API_VERSION: &str = "2016-11-15";

/// Parameters of one EC2 action, in the Query API's flattened `Name.N.Field` form.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Params(pub Vec<(String, String)>);

impl Params {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn set(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.0.push((name.into(), value.into()));
        self
    }

    /// `Tag.N.Key` / `Tag.N.Value` under `prefix` (for example `TagSpecification.1.`).
    pub fn tags(mut self, prefix: &str, tags: &[(String, String)]) -> Self {
        for (index, (key, value)) in tags.iter().enumerate() {
            let n = index + 1;
            self = self
                .set(format!("{prefix}Tag.{n}.Key"), key)
                .set(format!("{prefix}Tag.{n}.Value"), value);
        }
        self
    }

    /// `Filter.N.Name` / `Filter.N.Value.M`: an item matches when it matches every filter, and a
    /// filter when any of its values matches.
    pub fn filters(mut self, filters: &[(&str, &[&str])]) -> Self {
        for (index, (name, values)) in filters.iter().enumerate() {
            let n = index + 1;
            self = self.set(format!("Filter.{n}.Name"), *name);
            for (v, value) in values.iter().enumerate() {
                self = self.set(format!("Filter.{n}.Value.{}", v + 1), *value);
            }
        }
        self
    }

    fn form(&self, action: &str) -> String {
        let mut form = format!("Action={action}&Version={API_VERSION}");
        for (name, value) in &self.0 {
            form.push('&');
            form.push_str(&percent_encode(name));
            form.push('=');
            form.push_str(&percent_encode(value));
        }
        form
    }
}

/// RFC 3986 unreserved characters stay, everything else is %XX (what SigV4 expects of a form body).
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Calls `action`; the XML answer.
pub fn call(aws: &Aws, action: &str, params: &Params) -> Result<String> {
    let body = params.form(action);
    let response = aws
        .call(&Request {
            service: Service::Ec2,
            method: "POST",
            path: "/".to_owned(),
            headers: vec![(
                "content-type",
                "application/x-www-form-urlencoded; charset=utf-8".to_owned(),
            )],
            body: body.as_bytes(),
            body_sha256: None,
        })
        .with_context(|| format!("EC2 {action}"))?;
    String::from_utf8(response.body)
        .with_context(|| format!("EC2 {action}: the answer is not UTF-8"))
}

/// One `<item>` of a set in an EC2 answer: its direct child elements' text, by tag name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Item {
    fields: Vec<(String, String)>,
    pub tags: Vec<(String, String)>,
}

impl Item {
    pub fn get(&self, field: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(name, _)| name == field)
            .map(|(_, value)| value.as_str())
    }

    pub fn require(&self, field: &str) -> Result<&str> {
        self.get(field)
            .with_context(|| format!("an EC2 answer has no {field}"))
    }

    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, value)| value.as_str())
    }
}

/// The items of every `<set>` element in `xml` (`imagesSet`, `snapshotSet`, `instancesSet`), each
/// with its `tagSet` read into tags.
pub fn items(xml: &str, set: &str) -> Result<Vec<Item>> {
    let doc = roxmltree::Document::parse(xml).context("EC2 answered with malformed XML")?;
    let mut items = Vec::new();
    for set_node in doc.descendants().filter(|n| n.has_tag_name(set)) {
        for node in set_node.children().filter(|n| n.has_tag_name("item")) {
            let mut item = Item::default();
            for child in node.children().filter(roxmltree::Node::is_element) {
                if child.has_tag_name("tagSet") {
                    for tag in child.children().filter(|n| n.has_tag_name("item")) {
                        let text = |name: &str| {
                            tag.children()
                                .find(|n| n.has_tag_name(name))
                                .and_then(|n| n.text())
                                .unwrap_or_default()
                                .to_owned()
                        };
                        item.tags.push((text("key"), text("value")));
                    }
                } else if let Some(text) = child
                    .text()
                    .filter(|_| !child.children().any(|c| c.is_element()))
                {
                    item.fields
                        .push((child.tag_name().name().to_owned(), text.trim().to_owned()));
                }
            }
            items.push(item);
        }
    }
    Ok(items)
}

/// The text of the first `<tag>` in `xml`.
pub fn text(xml: &str, tag: &str) -> Result<String> {
    let doc = roxmltree::Document::parse(xml).context("EC2 answered with malformed XML")?;
    match doc
        .descendants()
        .find(|n| n.has_tag_name(tag))
        .and_then(|n| n.text())
    {
        Some(text) => Ok(text.trim().to_owned()),
        None => bail!("an EC2 answer has no {tag}"),
    }
}

pub fn create_tags(aws: &Aws, resource: &str, tags: &[(String, String)]) -> Result<()> {
    call(
        aws,
        "CreateTags",
        &Params::new().set("ResourceId.1", resource).tags("", tags),
    )?;
    Ok(())
}

pub fn delete_snapshot(aws: &Aws, snapshot: &str) -> Result<()> {
    call(
        aws,
        "DeleteSnapshot",
        &Params::new().set("SnapshotId", snapshot),
    )?;
    Ok(())
}

/// This account's snapshots that carry tag `key` = `value`.
pub fn snapshots_tagged(aws: &Aws, key: &str, value: &str) -> Result<Vec<Item>> {
    let filter = format!("tag:{key}");
    let params = Params::new()
        .set("Owner.1", "self")
        .filters(&[(&filter, &[value])]);
    items(&call(aws, "DescribeSnapshots", &params)?, "snapshotSet")
}

pub fn snapshot(aws: &Aws, snapshot: &str) -> Result<Item> {
    let params = Params::new().set("SnapshotId.1", snapshot);
    items(&call(aws, "DescribeSnapshots", &params)?, "snapshotSet")?
        .into_iter()
        .next()
        .with_context(|| format!("EC2 does not know snapshot {snapshot}"))
}

/// This account's AMIs that match `filters`.
pub fn images(aws: &Aws, filters: &[(&str, &[&str])]) -> Result<Vec<Item>> {
    let params = Params::new().set("Owner.1", "self").filters(filters);
    items(&call(aws, "DescribeImages", &params)?, "imagesSet")
}

/// What RunInstances starts: one instance of `image`, with `user_data` (no secrets: the instance
/// reads those with its own role) and `tags`.
#[derive(Debug, Clone)]
pub struct Launch<'a> {
    pub image: &'a str,
    pub instance_type: &'a str,
    pub instance_profile: &'a str,
    pub security_groups: &'a [String],
    pub subnet: Option<&'a str>,
    pub user_data: &'a str,
    pub tags: &'a [(String, String)],
}

pub fn launch_params(launch: &Launch) -> Params {
    use base64::Engine;
    let mut params = Params::new()
        .set("ImageId", launch.image)
        .set("InstanceType", launch.instance_type)
        .set("MinCount", "1")
        .set("MaxCount", "1")
        .set("IamInstanceProfile.Name", launch.instance_profile)
        .set(
            "UserData",
            base64::engine::general_purpose::STANDARD.encode(launch.user_data),
        )
        // IMDSv2 only: a token per session, so a forwarded request cannot read the instance's role.
        .set("MetadataOptions.HttpTokens", "required")
        .set("MetadataOptions.HttpEndpoint", "enabled")
        .set("TagSpecification.1.ResourceType", "instance")
        .tags("TagSpecification.1.", launch.tags);
    for (index, group) in launch.security_groups.iter().enumerate() {
        params = params.set(format!("SecurityGroupId.{}", index + 1), group);
    }
    if let Some(subnet) = launch.subnet {
        params = params.set("SubnetId", subnet);
    }
    params
}

/// Starts the instance; its id.
pub fn run_instance(aws: &Aws, launch: &Launch) -> Result<String> {
    let answer = call(aws, "RunInstances", &launch_params(launch))?;
    items(&answer, "instancesSet")?
        .first()
        .and_then(|i| i.get("instanceId").map(str::to_owned))
        .context("RunInstances answered without an instance")
}

/// Instances that match `filters` (for example `tag:lectern:host` and `instance-state-name`).
pub fn instances(aws: &Aws, filters: &[(&str, &[&str])]) -> Result<Vec<Item>> {
    let answer = call(aws, "DescribeInstances", &Params::new().filters(filters))?;
    items(&answer, "instancesSet")
}

pub fn terminate_instances(aws: &Aws, ids: &[String]) -> Result<()> {
    let mut params = Params::new();
    for (index, id) in ids.iter().enumerate() {
        params = params.set(format!("InstanceId.{}", index + 1), id);
    }
    call(aws, "TerminateInstances", &params)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_flattened_and_encoded() {
        let params = Params::new()
            .set("Name", "lectern encoder/1")
            .tags(
                "TagSpecification.1.",
                &[("lectern:role".into(), "encoder".into())],
            )
            .filters(&[("tag:lectern:image", &["ab"])]);
        assert_eq!(
            params.form("X"),
            "Action=X&Version=2016-11-15&Name=lectern%20encoder%2F1\
             &TagSpecification.1.Tag.1.Key=lectern%3Arole&TagSpecification.1.Tag.1.Value=encoder\
             &Filter.1.Name=tag%3Alectern%3Aimage&Filter.1.Value.1=ab"
        );
    }

    #[test]
    fn answers_are_read_into_items_with_their_tags() {
        let xml = r#"<DescribeImagesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
            <imagesSet><item><imageId>ami-1</imageId><name>lectern-encoder-ab</name>
            <blockDeviceMapping><item><deviceName>/dev/xvda</deviceName></item></blockDeviceMapping>
            <tagSet><item><key>lectern:release</key><value>3</value></item></tagSet></item></imagesSet>
            </DescribeImagesResponse>"#;
        let images = items(xml, "imagesSet").unwrap();
        assert_eq!(images.len(), 1);
        assert_eq!(images[0].get("imageId"), Some("ami-1"));
        assert_eq!(images[0].tag("lectern:release"), Some("3"));
        assert_eq!(text(xml, "name").unwrap(), "lectern-encoder-ab");
        assert!(items("<a", "imagesSet").is_err());
    }
}
