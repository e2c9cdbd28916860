//! CloudTrail stand-in: `LookupEvents` over AWS JSON 1.1.

use std::collections::BTreeMap;

use super::api::{Api, State};
use super::http::Response;

/// `X-Amz-Target` prefix of CloudTrail's operations.
pub const TARGET_PREFIX: &str = "com.amazonaws.cloudtrail.v20131101.CloudTrail_20131101.";

/// HTTP status CloudTrail answers an error code with.
pub fn status(code: &str) -> u16 {
    match code {
        "InternalServerError" | "ServiceUnavailable" => 500,
        _ => 400,
    }
}

/// An AWS JSON 1.1 error answer.
pub fn error_response(status: u16, code: &str, msg: &str) -> Response {
    super::api::json_error_response(status, code, msg)
}

pub fn handle(
    _api: &Api,
    _st: &mut State,
    action: &str,
    _params: &BTreeMap<String, String>,
) -> Result<Response, (u16, String, String)> {
    Err((
        400,
        "UnknownOperationException".to_owned(),
        format!("Unknown operation {action:?}"),
    ))
}
