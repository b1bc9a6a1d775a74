//! The agent's error: a message with the ttrpc code it is answered with.

/// An error with the ttrpc code it should be answered with.
#[derive(Debug)]
pub struct Error {
    pub code: ttrpc::Code,
    pub message: String,
}

pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn err<T>(code: ttrpc::Code, message: impl Into<String>) -> Result<T> {
    Err(Error {
        code,
        message: message.into(),
    })
}

pub(crate) fn internal(message: impl Into<String>) -> Error {
    Error {
        code: ttrpc::Code::INTERNAL,
        message: message.into(),
    }
}

impl From<Error> for ttrpc::Error {
    fn from(e: Error) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code, e.message))
    }
}
