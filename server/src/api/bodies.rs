//! Every JSON request body type the API accepts, decoded the way its handler decodes it:
//! the one entry point the `fuzz/` target and the property test below drive.

use super::extract::json_body;
use super::{events, identity, jobs, users, webhooks};
use crate::http::ApiError;

/// Decodes `body` as each body type in turn: each result is `Ok` or the error its handler
/// would answer with (before the handler's own checks of the values).
pub fn decode_every_body(body: &[u8]) -> [Result<(), ApiError>; 7] {
    fn decode<'a, T: serde::Deserialize<'a>>(body: &'a [u8]) -> Result<(), ApiError> {
        json_body::<T>(body).map(|_| ())
    }
    [
        decode::<identity::Registration>(body),
        decode::<identity::Credentials>(body),
        decode::<users::ProfilePatch>(body),
        decode::<users::PrefsInput>(body),
        decode::<events::NewEvent>(body),
        decode::<jobs::NewJob>(body),
        decode::<webhooks::NewWebhook>(body),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check(body: &[u8]) -> Result<(), TestCaseError> {
        for result in decode_every_body(body) {
            if let Err(error) = result {
                // Malformed JSON is 400; well-formed JSON of the wrong shape is 422.
                prop_assert!(
                    matches!(
                        (error.status, error.code),
                        (400, "invalid_json") | (422, "invalid_fields")
                    ),
                    "{} {}",
                    error.status,
                    error.code
                );
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_get_400_or_422_from_every_body_type(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            check(&bytes)?;
        }

        #[test]
        fn json_like_text_gets_400_or_422_from_every_body_type(
            text in r#"\{("[a-z_]{1,12}": ?(null|true|-?[0-9]{1,20}(\.[0-9]+)?|"[^"\\]{0,20}"|\[[0-9, ]{0,10}\]|\{\}),? ?){0,5}\}?"#
        ) {
            check(text.as_bytes())?;
        }
    }

    #[test]
    fn a_valid_body_of_each_type_decodes() {
        // The property above would pass vacuously if no body ever decoded: each type has one.
        let valid: [&str; 7] = [
            r#"{"email":"a@b.test","password":"p","name":"n"}"#,
            r#"{"email":"a@b.test","password":"p"}"#,
            r#"{"bio":"b"}"#,
            r#"{"locale":"en","timezone":"UTC","theme":"dark","email_opt_in":true}"#,
            r#"{"kind":"k","payload":{}}"#,
            r#"{"kind":"pdf","params":{}}"#,
            r#"{"url":"https://h.test/","events":["*"]}"#,
        ];
        for (index, body) in valid.iter().enumerate() {
            let result = &decode_every_body(body.as_bytes())[index];
            assert!(
                result.is_ok(),
                "type {index}: {:?}",
                result.as_ref().err().map(|e| e.code)
            );
        }
    }
}
