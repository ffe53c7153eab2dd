//! The README's master-file reference is generated from the schema; this keeps it current.
//! Regenerate with `LECTERN_BLESS=1 cargo test -p lectern-master --test readme_reference`
//! (or paste the output of `imgbuild schema --markdown`).

use std::path::Path;

const START: &str = "<!-- master-reference:start (generated: imgbuild schema --markdown) -->\n";
const END: &str = "<!-- master-reference:end -->";

#[test]
fn readme_reference_matches_the_schema() {
    let readme_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let readme = std::fs::read_to_string(&readme_path).unwrap();
    let start = readme
        .find(START)
        .expect("README has the reference start marker")
        + START.len();
    let end = readme
        .find(END)
        .expect("README has the reference end marker");
    let generated = lectern_master::reference::markdown();
    if std::env::var_os("LECTERN_BLESS").is_some() {
        let updated = format!("{}{generated}{}", &readme[..start], &readme[end..]);
        std::fs::write(&readme_path, updated).unwrap();
        return;
    }
    assert!(
        readme[start..end] == generated,
        "README.md's master-file reference is out of date: run LECTERN_BLESS=1 cargo test -p lectern-master --test readme_reference"
    );
}
