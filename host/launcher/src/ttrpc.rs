//! One unary ttrpc call over a unix socket, with the few protobuf fields it needs written and
//! read by hand (shim/proto/ttrpc.proto, admin.proto): this binary must start in a millisecond.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

const HEADER: usize = 10;
const TYPE_REQUEST: u8 = 1;
const TYPE_RESPONSE: u8 = 2;
/// ttrpc's limit for one message (shim/src/ttrpc/frame.ts).
const MAX_DATA: usize = 4 << 20;
pub const NOT_FOUND: i32 = 5;

pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited field (string, bytes, message), written even when empty as protobufjs does.
pub fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_varint(out, u64::from(field << 3 | 2));
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

pub fn put_uint(out: &mut Vec<u8>, field: u32, v: u64) {
    put_varint(out, u64::from(field << 3));
    put_varint(out, v);
}

/// The fields of one message: (number, varint value or bytes).
pub enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

pub fn fields(mut buf: &[u8]) -> Option<Vec<(u32, Value<'_>)>> {
    fn varint(buf: &mut &[u8]) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..70).step_by(7) {
            let (&b, rest) = buf.split_first()?;
            *buf = rest;
            v |= u64::from(b & 0x7f).checked_shl(shift)?;
            if b < 0x80 {
                return Some(v);
            }
        }
        None
    }
    let mut out = Vec::new();
    while !buf.is_empty() {
        let key = varint(&mut buf)?;
        let field = u32::try_from(key >> 3).ok()?;
        match key & 7 {
            0 => out.push((field, Value::Varint(varint(&mut buf)?))),
            1 => buf = buf.get(8..)?,
            2 => {
                let len = usize::try_from(varint(&mut buf)?).ok()?;
                let (bytes, rest) = (buf.get(..len)?, buf.get(len..)?);
                buf = rest;
                out.push((field, Value::Bytes(bytes)));
            }
            5 => buf = buf.get(4..)?,
            _ => return None,
        }
    }
    Some(out)
}

pub enum CallError {
    /// Nothing was sent: the caller may hand the whole job to the Node.js shim.
    NotSent,
    /// The request went out; what happened after is this message (worded as the Node.js client's).
    Failed(String),
    /// The server answered with a non-OK status.
    Status(i32, String),
}

/// gRPC code names as shim/src/ttrpc/status.ts prints them.
pub fn code_name(code: i32) -> String {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    usize::try_from(code)
        .ok()
        .and_then(|i| NAMES.get(i))
        .map_or_else(|| format!("CODE_{code}"), |n| (*n).to_string())
}

/// Calls `service/method` on stream 1 and returns the response payload.
pub fn call(
    socket: &str,
    service: &str,
    method: &str,
    payload: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, CallError> {
    let mut conn = UnixStream::connect(socket).map_err(|_| CallError::NotSent)?;
    let mut request = Vec::with_capacity(payload.len() + service.len() + method.len() + 16);
    put_bytes(&mut request, 1, service.as_bytes());
    put_bytes(&mut request, 2, method.as_bytes());
    put_bytes(&mut request, 3, payload);
    put_uint(&mut request, 4, timeout.as_nanos() as u64);
    let mut frame = Vec::with_capacity(HEADER + request.len());
    frame.extend_from_slice(&(request.len() as u32).to_be_bytes());
    frame.extend_from_slice(&1u32.to_be_bytes());
    frame.extend_from_slice(&[TYPE_REQUEST, 0]);
    frame.extend_from_slice(&request);
    // A unix socket takes a small frame whole, so a failed write means nothing was sent.
    conn.set_write_timeout(Some(Duration::from_secs(5)))
        .map_err(|_| CallError::NotSent)?;
    conn.write_all(&frame).map_err(|_| CallError::NotSent)?;
    conn.set_read_timeout(Some(timeout))
        .map_err(|e| CallError::Failed(format!("UNAVAILABLE: ttrpc connection error: {e}")))?;
    let deadline = std::time::Instant::now() + timeout;
    let where_ = format!("{service}/{method}");
    let closed = || CallError::Failed("UNAVAILABLE: ttrpc connection closed".to_string());
    let read_exact = |conn: &mut UnixStream, buf: &mut [u8]| -> Result<(), CallError> {
        conn.read_exact(buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                CallError::Failed(format!(
                    "DEADLINE_EXCEEDED: {where_} got no answer within {} ms",
                    timeout.as_millis()
                ))
            }
            _ => closed(),
        })
    };
    loop {
        let mut head = [0u8; HEADER];
        read_exact(&mut conn, &mut head)?;
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let stream = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
        if len > MAX_DATA {
            return Err(CallError::Failed(format!(
                "DATA_LOSS: bad frame from ttrpc server: ttrpc frame announces {len} bytes, over the {MAX_DATA}-byte limit"
            )));
        }
        let mut data = vec![0u8; len];
        read_exact(&mut conn, &mut data)?;
        // Frames of other streams cannot be ours; a slow server gets the rest of the deadline.
        if stream != 1 || head[8] != TYPE_RESPONSE {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(CallError::Failed(format!(
                    "DEADLINE_EXCEEDED: {where_} got no answer within {} ms",
                    timeout.as_millis()
                )));
            }
            let _ = conn.set_read_timeout(Some(left));
            continue;
        }
        let undecodable = || CallError::Failed("DATA_LOSS: undecodable ttrpc response".to_string());
        let mut status: Option<(i32, String)> = None;
        let mut reply: &[u8] = &[];
        for (field, value) in fields(&data).ok_or_else(undecodable)? {
            match (field, value) {
                (1, Value::Bytes(s)) => {
                    let mut code = 0i32;
                    let mut message = String::new();
                    for (f, v) in fields(s).ok_or_else(undecodable)? {
                        match (f, v) {
                            (1, Value::Varint(c)) => code = c as i32,
                            (2, Value::Bytes(m)) => {
                                message = String::from_utf8_lossy(m).into_owned()
                            }
                            _ => {}
                        }
                    }
                    status = Some((code, message));
                }
                (2, Value::Bytes(p)) => reply = p,
                _ => {}
            }
        }
        return match status {
            Some((code, message)) if code != 0 => Err(CallError::Status(code, message)),
            _ => Ok(reply.to_vec()),
        };
    }
}
