//! Generated blocks inside `spec/PROTOCOL.md`, between
//! `<!-- BEGIN GENERATED name -->` and `<!-- END GENERATED name -->` lines.

/// Replaces the body of the generated block `name` with `body`.
pub(crate) fn replace_block(md: &str, name: &str, body: &str) -> Result<String, String> {
    let begin = format!("<!-- BEGIN GENERATED {name} (cargo xtask codegen) -->");
    let end = format!("<!-- END GENERATED {name} -->");
    let start = md
        .find(&begin)
        .ok_or_else(|| format!("missing the line `{begin}`"))?;
    let stop = md[start..]
        .find(&end)
        .map(|i| i + start)
        .ok_or_else(|| format!("missing the line `{end}`"))?;
    let mut out = String::with_capacity(md.len() + body.len());
    out.push_str(&md[..start + begin.len()]);
    out.push('\n');
    out.push_str(body);
    if !body.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&md[stop..]);
    Ok(out)
}

/// The numbers of every section heading (`## 4.2 Title` gives `4.2`).
pub(crate) fn sections(md: &str) -> Vec<String> {
    md.lines()
        .filter(|l| l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.trim_start_matches('#').trim();
            let num = rest.split_whitespace().next()?;
            let num = num.trim_end_matches('.');
            num.chars()
                .all(|c| c.is_ascii_digit() || c == '.')
                .then(|| num.to_string())
                .filter(|n| !n.is_empty())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_only_the_named_block() {
        let md = "a\n<!-- BEGIN GENERATED x (cargo xtask codegen) -->\nold\n<!-- END GENERATED x -->\nb\n";
        let out = replace_block(md, "x", "new").unwrap();
        assert_eq!(
            out,
            "a\n<!-- BEGIN GENERATED x (cargo xtask codegen) -->\nnew\n<!-- END GENERATED x -->\nb\n"
        );
        assert!(replace_block(md, "y", "z").is_err());
    }

    #[test]
    fn finds_numbered_headings() {
        let md = "# Title\n## 1. Intro\n### 4.2 Welcome\ntext\n## Appendix\n";
        assert_eq!(sections(md), vec!["1", "4.2"]);
    }
}
