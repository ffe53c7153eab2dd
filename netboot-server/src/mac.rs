//! Ethernet MAC addresses, the key every protocol and the policy agree on (the master file's own
//! type, so the plan's hosts need no conversion).

pub use lectern_master::mac::{MacAddr, ParseMacError};
