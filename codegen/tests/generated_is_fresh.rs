//! Fails when the committed generated files differ from what the spec gives
//! now. Like rust-analyzer's codegen tests, it also rewrites them, so that
//! running the tests once both finds and fixes the drift.

use convene_codegen::{Layout, Mode, REGENERATE, run};

#[test]
fn generated_code_matches_the_spec() {
    let layout = Layout::this_workspace();
    if let Err(stale) = run(&layout, Mode::Check) {
        let rewritten = run(&layout, Mode::Write);
        panic!(
            "{stale}\n(the files were rewritten: {rewritten:?}; review and commit them, \
             or run `{REGENERATE}` yourself)"
        );
    }
}
