//! Every JSON request body type on arbitrary bytes: each decodes or answers 400
//! `invalid_json` / 422 `invalid_fields`, and nothing panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for result in percore::api::bodies::decode_every_body(data) {
        if let Err(error) = result {
            assert!(matches!(error.status, 400 | 422), "{} {}", error.status, error.code);
        }
    }
});
