//! # wrong-world — a valid component that is not a Locus plugin at all
//!
//! It exports a greeting instead of `locus:plugin/transform`: the host must refuse it.

#[allow(unsafe_code, missing_docs, missing_debug_implementations)]
mod bindings {
    wit_bindgen::generate!({
        inline: r#"
            package example:greeter;

            world greeter {
                export greet: func(name: string) -> string;
            }
        "#,
    });
}

struct Greeter;

impl bindings::Guest for Greeter {
    fn greet(name: String) -> String {
        format!("hello, {name}")
    }
}

#[allow(unsafe_code)]
mod export {
    use super::*;
    bindings::export!(Greeter with_types_in bindings);
}
