//! Lists of names in one line of a report: the first few, and how many more.

/// "a, b, c and 4 more": the first `shown` of `names`, enough to find the rest, and how many more
/// there are; a line stays a line at 90 hosts.
pub fn some_of(names: &[impl AsRef<str>], shown: usize) -> String {
    let joined = |names: &[_]| -> String {
        names
            .iter()
            .map(AsRef::as_ref)
            .collect::<Vec<&str>>()
            .join(", ")
    };
    if names.len() <= shown {
        joined(names)
    } else {
        format!(
            "{} and {} more",
            joined(&names[..shown]),
            names.len() - shown
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_first_few_and_counts_the_rest() {
        assert_eq!(some_of(&["a"], 3), "a");
        assert_eq!(some_of(&["a", "b", "c"], 3), "a, b, c");
        assert_eq!(some_of(&["a", "b", "c", "d", "e"], 3), "a, b, c and 2 more");
        let names: Vec<String> = (1..=90).map(|n| format!("h{n}")).collect();
        assert_eq!(
            some_of(&names, 8),
            "h1, h2, h3, h4, h5, h6, h7, h8 and 82 more"
        );
    }
}
