//! # wrong-contract — a plugin built for a contract version the host does not speak
//!
//! Same shape as the real contract, but `locus:plugin@0.2.0`: the host must refuse it and say
//! which version it needs.

#[allow(unsafe_code, missing_docs, missing_debug_implementations)]
mod bindings {
    wit_bindgen::generate!({
        inline: r#"
            package locus:plugin@0.2.0;

            interface transform {
                init: func(config: list<tuple<string, string>>) -> result<_, string>;
                process: func(fixes: list<string>) -> list<string>;
            }

            world plugin {
                export transform;
            }
        "#,
    });
}

struct Future;

impl bindings::exports::locus::plugin::transform::Guest for Future {
    fn init(_config: Vec<(String, String)>) -> Result<(), String> {
        Ok(())
    }

    fn process(fixes: Vec<String>) -> Vec<String> {
        fixes
    }
}

#[allow(unsafe_code)]
mod export {
    use super::*;
    bindings::export!(Future with_types_in bindings);
}
