//! IAM and STS stand-ins: the Query protocol with XML answers.

use std::collections::BTreeMap;

use super::api::{Api, Service, State, xml_escape};
use super::http::Response;

/// IAM's API version (Query protocol).
pub const IAM_VERSION: &str = "2010-05-08";
/// STS's API version (Query protocol).
pub const STS_VERSION: &str = "2011-06-15";

/// HTTP status IAM and STS answer an error code with.
pub fn status(code: &str) -> u16 {
    match code {
        "NoSuchEntity" => 404,
        "AccessDenied" => 403,
        "ServiceFailure" => 500,
        _ => 400,
    }
}

/// An `ErrorResponse` document, as IAM and STS send it.
pub fn error_response(service: Service, status: u16, code: &str, msg: &str) -> Response {
    let _ = service;
    let body = format!(
        "<ErrorResponse><Error><Type>Sender</Type><Code>{}</Code><Message>{}</Message></Error><RequestId>{}</RequestId></ErrorResponse>",
        xml_escape(code),
        xml_escape(msg),
        super::api::uuid_like()
    );
    Response::new(status, "text/xml", body.into_bytes())
}

pub fn handle(
    _api: &Api,
    _st: &mut State,
    _service: Service,
    action: &str,
    _params: &BTreeMap<String, String>,
) -> Result<Response, (u16, String, String)> {
    Err((
        400,
        "InvalidAction".to_owned(),
        format!("Could not find operation {action}"),
    ))
}
