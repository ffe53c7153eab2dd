//! The few AWS calls lectern makes, signed with SigV4 over HTTPS: the EBS direct APIs that upload a disk
//! image into a snapshot, the EC2 Query calls that register it as an AMI (and run instances of it), and
//! SSM Parameter Store. A handful of calls does not justify the AWS SDK's build cost (see BENCHMARKS.md).

pub mod ami;
pub mod client;
pub mod credentials;
pub mod ebs;
pub mod ec2;
pub mod ssm;

pub use client::Aws;
