//! Parsers for the S3 XML responses `backupd` reads, and builders for the XML bodies it sends.
//!
//! The input is untrusted bytes from a store: the parsers never panic, keep a bounded
//! amount of data (see the `MAX_*` constants) and answer [`XmlError`] on anything they
//! cannot trust. Element names are matched by local name, so documents with or without
//! `xmlns="http://s3.amazonaws.com/doc/2006-03-01/"` (or a prefix) are read alike.
//! Text is taken as the XML says: entity and character references are resolved, CDATA
//! is kept verbatim, line ends are normalised as XML 1.0 requires, and keys are never
//! trimmed (a key may begin or end with a space).

use std::fmt;

use quick_xml::escape::resolve_predefined_entity;
use quick_xml::events::Event;
use quick_xml::reader::Reader;

/// Most entries (objects or uploads) accepted in one page; S3 never sends more than 1000.
pub const MAX_ENTRIES: usize = 1000;
/// Longest object key accepted, in bytes (the S3 limit).
pub const MAX_KEY_LEN: usize = 1024;
/// Longest other kept field (ETag, date, token, upload id, marker), in bytes.
pub const MAX_FIELD_LEN: usize = 4096;
/// Largest document accepted, in bytes. Callers should also stop reading a body past this.
pub const MAX_DOCUMENT_LEN: usize = 8 * 1024 * 1024;
/// Deepest element nesting accepted.
pub const MAX_DEPTH: usize = 32;
/// Most keys one DeleteObjects request may carry.
pub const MAX_DELETE_KEYS: usize = 1000;
/// Longest `Code` / `Message` kept by [`parse_error`]; longer ones are cut (on a char boundary).
pub const MAX_ERROR_TEXT_LEN: usize = 1024;

/// Why a response could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XmlError {
    /// Not well-formed XML, not UTF-8, unknown entity, unclosed element, etc.
    Malformed(String),
    /// The root element is not the one expected for this response (e.g. `Error`).
    UnexpectedRoot(String),
    /// A required element is missing or empty.
    MissingField(&'static str),
    /// An element that must hold a number or boolean holds something else.
    InvalidValue(&'static str),
    /// A field is longer than its limit, in bytes.
    TooLong {
        /// Element name.
        field: &'static str,
        /// The limit that was exceeded.
        limit: usize,
    },
    /// More entries than [`MAX_ENTRIES`].
    TooManyEntries,
    /// Document larger than [`MAX_DOCUMENT_LEN`] or nested deeper than [`MAX_DEPTH`].
    TooLarge,
    /// A feature the parser deliberately does not handle (e.g. `EncodingType` url).
    Unsupported(&'static str),
}

impl fmt::Display for XmlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            XmlError::Malformed(why) => write!(f, "malformed XML: {why}"),
            XmlError::UnexpectedRoot(root) => write!(f, "unexpected root element <{root}>"),
            XmlError::MissingField(field) => write!(f, "missing or empty <{field}>"),
            XmlError::InvalidValue(field) => write!(f, "invalid value in <{field}>"),
            XmlError::TooLong { field, limit } => {
                write!(f, "<{field}> longer than {limit} bytes")
            }
            XmlError::TooManyEntries => write!(f, "more than {MAX_ENTRIES} entries"),
            XmlError::TooLarge => write!(f, "document too large or too deeply nested"),
            XmlError::Unsupported(what) => write!(f, "unsupported: {what}"),
        }
    }
}

impl std::error::Error for XmlError {}

/// One object of a ListObjectsV2 page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    /// Object key, unescaped.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// `LastModified` exactly as given (ISO 8601), empty if absent.
    pub last_modified: String,
    /// `ETag` exactly as given, quotes included, empty if absent.
    pub etag: String,
}

/// One page of ListObjectsV2.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListPage {
    /// Objects in the order given.
    pub objects: Vec<Object>,
    /// Token for the next page; `Some` only when `IsTruncated` is true.
    pub next_continuation_token: Option<String>,
}

/// One in-progress multipart upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    /// Object key, unescaped.
    pub key: String,
    /// Upload id.
    pub upload_id: String,
    /// `Initiated` exactly as given (ISO 8601), empty if absent.
    pub initiated: String,
}

/// Where the next ListMultipartUploads page starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextMarkers {
    /// `NextKeyMarker`, to send as `key-marker`.
    pub key_marker: String,
    /// `NextUploadIdMarker`, to send as `upload-id-marker` (may be empty).
    pub upload_id_marker: String,
}

/// One page of ListMultipartUploads.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MultipartPage {
    /// Uploads in the order given.
    pub uploads: Vec<Upload>,
    /// Markers for the next page; `Some` only when `IsTruncated` is true.
    pub next_markers: Option<NextMarkers>,
}

/// An S3 error document (`<Error><Code>..</Code><Message>..</Message></Error>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Error {
    /// Machine-readable code, e.g. `NoSuchKey`, `SlowDown`.
    pub code: String,
    /// Human-readable message; empty if absent.
    pub message: String,
}

/// The text of an element whose content was asked for.
struct Text {
    value: String,
    /// More than the limit arrived; `value` holds only the first bytes.
    overflow: bool,
}

/// Walks a document and hands the caller the text of the elements it asks for.
///
/// The root element's local name must be one of `roots`.
/// `want(path)` is called at each start tag with the local names from the root down to
/// that element; it returns the byte limit to collect that element's text, or `None`.
/// Collected elements must hold text only (no child elements).
/// `done(path, text)` is called at each end tag, with the text when it was collected.
fn walk(
    bytes: &[u8],
    roots: &[&str],
    mut want: impl FnMut(&[&str]) -> Option<usize>,
    mut done: impl FnMut(&[&str], Option<Text>) -> Result<(), XmlError>,
) -> Result<(), XmlError> {
    if bytes.len() > MAX_DOCUMENT_LEN {
        return Err(XmlError::TooLarge);
    }
    let mut reader = Reader::from_reader(bytes);
    reader.config_mut().expand_empty_elements = true;
    reader.config_mut().check_end_names = true;

    let mut path: Vec<String> = Vec::new();
    // Text being collected for the innermost element, with its limit.
    let mut text: Option<(Text, usize)> = None;
    let mut root_seen = false;

    loop {
        let event = reader.read_event().map_err(|e| malformed(&e))?;
        match event {
            Event::Start(start) => {
                if path.is_empty() && root_seen {
                    return Err(XmlError::Malformed("more than one root element".into()));
                }
                if path.len() >= MAX_DEPTH {
                    return Err(XmlError::TooLarge);
                }
                if text.is_some() {
                    return Err(XmlError::Malformed("element inside a text field".into()));
                }
                let name = start.name();
                let local = name.local_name();
                if !root_seen && !roots.contains(&local.as_ref()) {
                    let mut found = local.as_ref().to_owned();
                    truncate_at_char(&mut found, 64);
                    return Err(XmlError::UnexpectedRoot(found));
                }
                root_seen = true;
                path.push(local.as_ref().to_owned());
                text = want(&names(&path)).map(|limit| {
                    (
                        Text {
                            value: String::new(),
                            overflow: false,
                        },
                        limit,
                    )
                });
            }
            Event::End(_) => {
                let collected = text.take().map(|(t, _)| t);
                done(&names(&path), collected)?;
                path.pop();
            }
            Event::Text(t) => {
                if path.is_empty() && !t.bytes().all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
                {
                    return Err(XmlError::Malformed("text outside the root".into()));
                }
                if let Some((acc, limit)) = text.as_mut() {
                    push_limited(acc, &t.xml10_content(), *limit);
                }
            }
            Event::CData(c) => {
                if path.is_empty() {
                    return Err(XmlError::Malformed("CDATA outside the root".into()));
                }
                if let Some((acc, limit)) = text.as_mut() {
                    push_limited(acc, &c.xml10_content(), *limit);
                }
            }
            Event::GeneralRef(r) => {
                let resolved = match r.resolve_char_ref() {
                    Ok(Some(c)) => c.to_string(),
                    Ok(None) => match resolve_predefined_entity(&r) {
                        Some(s) => s.to_owned(),
                        None => return Err(XmlError::Malformed("unknown entity".into())),
                    },
                    Err(e) => return Err(malformed(&e)),
                };
                if path.is_empty() {
                    return Err(XmlError::Malformed("reference outside the root".into()));
                }
                if let Some((acc, limit)) = text.as_mut() {
                    push_limited(acc, &resolved, *limit);
                }
            }
            Event::DocType(_) => {
                return Err(XmlError::Malformed("DOCTYPE is not allowed".into()));
            }
            Event::Empty(_) => {
                // Not produced with expand_empty_elements; kept for completeness.
                return Err(XmlError::Malformed("unexpected empty element".into()));
            }
            Event::Eof => {
                if !path.is_empty() {
                    return Err(XmlError::Malformed("unclosed element".into()));
                }
                if !root_seen {
                    return Err(XmlError::Malformed("no root element".into()));
                }
                return Ok(());
            }
            Event::Comment(_) | Event::Decl(_) | Event::PI(_) => {}
        }
    }
}

fn malformed(e: &dyn fmt::Display) -> XmlError {
    let mut msg = e.to_string();
    truncate_at_char(&mut msg, 200);
    XmlError::Malformed(msg)
}

fn push_limited(acc: &mut Text, s: &str, limit: usize) {
    if acc.overflow {
        return;
    }
    if acc.value.len() + s.len() > limit {
        acc.overflow = true;
        let room = limit - acc.value.len();
        let mut end = room.min(s.len());
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        acc.value.push_str(&s[..end]);
    } else {
        acc.value.push_str(s);
    }
}

fn truncate_at_char(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

/// Takes collected text, failing if it overflowed its limit.
fn field(text: Option<Text>, name: &'static str, limit: usize) -> Result<String, XmlError> {
    match text {
        Some(t) if t.overflow => Err(XmlError::TooLong { field: name, limit }),
        Some(t) => Ok(t.value),
        None => Ok(String::new()),
    }
}

/// Plain decimal digits only (`u64::from_str` would also take a leading `+`).
fn parse_u64(s: &str, name: &'static str) -> Result<u64, XmlError> {
    let s = s.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(XmlError::InvalidValue(name));
    }
    s.parse().map_err(|_| XmlError::InvalidValue(name))
}

fn parse_bool(s: &str, name: &'static str) -> Result<bool, XmlError> {
    match s.trim() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(XmlError::InvalidValue(name)),
    }
}

/// Parses a ListObjectsV2 response (`<ListBucketResult>`).
///
/// `CommonPrefixes` and other elements are ignored. `IsTruncated` is required, and a
/// truncated page without a `NextContinuationToken` is an error, so a paging loop can
/// neither stop early nor spin on the same page.
/// Responses to `encoding-type=url` are refused ([`XmlError::Unsupported`]): do not ask for it.
pub fn parse_list_objects_v2(bytes: &[u8]) -> Result<ListPage, XmlError> {
    #[derive(Default)]
    struct Cur {
        key: Option<String>,
        size: Option<u64>,
        last_modified: String,
        etag: String,
    }
    let mut objects = Vec::new();
    let mut cur = Cur::default();
    let mut truncated = None;
    let mut token = None;
    let mut encoding = String::new();

    walk(
        bytes,
        &["ListBucketResult"],
        |path| match path {
            [_, "Contents", "Key"] => Some(MAX_KEY_LEN),
            [_, "Contents", "Size" | "LastModified" | "ETag"] => Some(MAX_FIELD_LEN),
            [_, "IsTruncated" | "NextContinuationToken" | "EncodingType"] => Some(MAX_FIELD_LEN),
            _ => None,
        },
        |path, text| {
            match path {
                [_, "Contents"] => {
                    if objects.len() >= MAX_ENTRIES {
                        return Err(XmlError::TooManyEntries);
                    }
                    let c = std::mem::take(&mut cur);
                    let key = c
                        .key
                        .filter(|k| !k.is_empty())
                        .ok_or(XmlError::MissingField("Key"))?;
                    let size = c.size.ok_or(XmlError::MissingField("Size"))?;
                    objects.push(Object {
                        key,
                        size,
                        last_modified: c.last_modified,
                        etag: c.etag,
                    });
                }
                [_, "Contents", "Key"] => {
                    cur.key = Some(field(text, "Key", MAX_KEY_LEN)?);
                }
                [_, "Contents", "Size"] => {
                    let s = field(text, "Size", MAX_FIELD_LEN)?;
                    cur.size = Some(parse_u64(&s, "Size")?);
                }
                [_, "Contents", "LastModified"] => {
                    cur.last_modified = field(text, "LastModified", MAX_FIELD_LEN)?;
                }
                [_, "Contents", "ETag"] => {
                    cur.etag = field(text, "ETag", MAX_FIELD_LEN)?;
                }
                [_, "IsTruncated"] => {
                    let s = field(text, "IsTruncated", MAX_FIELD_LEN)?;
                    truncated = Some(parse_bool(&s, "IsTruncated")?);
                }
                [_, "NextContinuationToken"] => {
                    token = Some(field(text, "NextContinuationToken", MAX_FIELD_LEN)?);
                }
                [_, "EncodingType"] => {
                    encoding = field(text, "EncodingType", MAX_FIELD_LEN)?;
                }
                _ => {}
            }
            Ok(())
        },
    )?;

    if !encoding.trim().is_empty() {
        return Err(XmlError::Unsupported("EncodingType"));
    }
    let truncated = truncated.ok_or(XmlError::MissingField("IsTruncated"))?;
    let next_continuation_token = if truncated {
        match token {
            Some(t) if !t.is_empty() => Some(t),
            _ => return Err(XmlError::MissingField("NextContinuationToken")),
        }
    } else {
        None
    };
    Ok(ListPage {
        objects,
        next_continuation_token,
    })
}

/// Parses a CreateMultipartUpload response (`<InitiateMultipartUploadResult>`) and
/// returns its `UploadId`.
pub fn parse_initiate_multipart(bytes: &[u8]) -> Result<String, XmlError> {
    let mut upload_id = None;
    walk(
        bytes,
        &["InitiateMultipartUploadResult"],
        |path| matches!(path, [_, "UploadId"]).then_some(MAX_FIELD_LEN),
        |path, text| {
            if let [_, "UploadId"] = path {
                upload_id = Some(field(text, "UploadId", MAX_FIELD_LEN)?);
            }
            Ok(())
        },
    )?;
    upload_id
        .filter(|id| !id.is_empty())
        .ok_or(XmlError::MissingField("UploadId"))
}

/// Parses an UploadPartCopy response (`<CopyPartResult>`) and returns the
/// part's `ETag`, as CompleteMultipartUpload wants it.
pub fn parse_copy_part(bytes: &[u8]) -> Result<String, XmlError> {
    let mut etag = None;
    walk(
        bytes,
        &["CopyPartResult"],
        |path| matches!(path, [_, "ETag"]).then_some(MAX_FIELD_LEN),
        |path, text| {
            if let [_, "ETag"] = path {
                etag = Some(field(text, "ETag", MAX_FIELD_LEN)?);
            }
            Ok(())
        },
    )?;
    etag.filter(|e| !e.is_empty())
        .ok_or(XmlError::MissingField("ETag"))
}

/// Parses a ListMultipartUploads response (`<ListMultipartUploadsResult>`).
///
/// `IsTruncated` is required; a truncated page without a `NextKeyMarker` is an error.
pub fn parse_list_multipart_uploads(bytes: &[u8]) -> Result<MultipartPage, XmlError> {
    #[derive(Default)]
    struct Cur {
        key: Option<String>,
        upload_id: Option<String>,
        initiated: String,
    }
    let mut uploads = Vec::new();
    let mut cur = Cur::default();
    let mut truncated = None;
    let mut next_key = None;
    let mut next_upload_id = None;

    walk(
        bytes,
        &["ListMultipartUploadsResult"],
        |path| match path {
            [_, "Upload", "Key"] | [_, "NextKeyMarker"] => Some(MAX_KEY_LEN),
            [_, "Upload", "UploadId" | "Initiated"] => Some(MAX_FIELD_LEN),
            [_, "IsTruncated" | "NextUploadIdMarker"] => Some(MAX_FIELD_LEN),
            _ => None,
        },
        |path, text| {
            match path {
                [_, "Upload"] => {
                    if uploads.len() >= MAX_ENTRIES {
                        return Err(XmlError::TooManyEntries);
                    }
                    let c = std::mem::take(&mut cur);
                    let key = c
                        .key
                        .filter(|k| !k.is_empty())
                        .ok_or(XmlError::MissingField("Key"))?;
                    let upload_id = c
                        .upload_id
                        .filter(|id| !id.is_empty())
                        .ok_or(XmlError::MissingField("UploadId"))?;
                    uploads.push(Upload {
                        key,
                        upload_id,
                        initiated: c.initiated,
                    });
                }
                [_, "Upload", "Key"] => cur.key = Some(field(text, "Key", MAX_KEY_LEN)?),
                [_, "Upload", "UploadId"] => {
                    cur.upload_id = Some(field(text, "UploadId", MAX_FIELD_LEN)?);
                }
                [_, "Upload", "Initiated"] => {
                    cur.initiated = field(text, "Initiated", MAX_FIELD_LEN)?;
                }
                [_, "IsTruncated"] => {
                    let s = field(text, "IsTruncated", MAX_FIELD_LEN)?;
                    truncated = Some(parse_bool(&s, "IsTruncated")?);
                }
                [_, "NextKeyMarker"] => {
                    next_key = Some(field(text, "NextKeyMarker", MAX_KEY_LEN)?);
                }
                [_, "NextUploadIdMarker"] => {
                    next_upload_id = Some(field(text, "NextUploadIdMarker", MAX_FIELD_LEN)?);
                }
                _ => {}
            }
            Ok(())
        },
    )?;

    let truncated = truncated.ok_or(XmlError::MissingField("IsTruncated"))?;
    let next_markers = if truncated {
        let key_marker = next_key
            .filter(|k| !k.is_empty())
            .ok_or(XmlError::MissingField("NextKeyMarker"))?;
        Some(NextMarkers {
            key_marker,
            upload_id_marker: next_upload_id.unwrap_or_default(),
        })
    } else {
        None
    };
    Ok(MultipartPage {
        uploads,
        next_markers,
    })
}

/// Parses an S3 error document; `None` if `bytes` is not one (or is not well-formed).
///
/// Accepts `<Error>` at the root and, as some S3-compatible stores send,
/// `<ErrorResponse><Error>`. `Code` must be present; `Code` and `Message` are cut to
/// [`MAX_ERROR_TEXT_LEN`] bytes.
pub fn parse_error(bytes: &[u8]) -> Option<S3Error> {
    let mut code = None;
    let mut message = None;
    let result = walk(
        bytes,
        &["Error", "ErrorResponse"],
        |path| match path {
            ["Error", "Code" | "Message"] | ["ErrorResponse", "Error", "Code" | "Message"] => {
                Some(MAX_ERROR_TEXT_LEN)
            }
            _ => None,
        },
        |path, text| {
            match path {
                ["Error", "Code"] | ["ErrorResponse", "Error", "Code"] => {
                    code = text.map(|t| t.value);
                }
                ["Error", "Message"] | ["ErrorResponse", "Error", "Message"] => {
                    message = text.map(|t| t.value);
                }
                _ => {}
            }
            Ok(())
        },
    );
    if result.is_err() {
        return None;
    }
    let code = code
        .map(|c| c.trim().to_owned())
        .filter(|c| !c.is_empty())?;
    Some(S3Error {
        code,
        message: message.unwrap_or_default(),
    })
}

/// Body of CompleteMultipartUpload. `parts` are (part number, ETag as returned by
/// UploadPart); an ETag without surrounding quotes gets them. Parts must be given in
/// ascending part-number order, as S3 requires.
pub fn complete_multipart_body(parts: &[(u32, &str)]) -> String {
    let mut out = String::from("<CompleteMultipartUpload>");
    for (number, etag) in parts {
        let quoted = etag.len() >= 2 && etag.starts_with('"') && etag.ends_with('"');
        out.push_str("<Part><PartNumber>");
        out.push_str(&number.to_string());
        out.push_str("</PartNumber><ETag>");
        if !quoted {
            out.push('"');
        }
        escape_into(&mut out, etag);
        if !quoted {
            out.push('"');
        }
        out.push_str("</ETag></Part>");
    }
    out.push_str("</CompleteMultipartUpload>");
    out
}

/// Body of DeleteObjects (quiet mode: the response lists only failures).
///
/// At most [`MAX_DELETE_KEYS`] keys per request; the caller splits larger sets. S3 also
/// requires a `Content-MD5` or `x-amz-checksum-*` header on this request.
pub fn delete_objects_body(keys: &[&str]) -> String {
    let mut out = String::from("<Delete><Quiet>true</Quiet>");
    for key in keys {
        out.push_str("<Object><Key>");
        escape_into(&mut out, key);
        out.push_str("</Key></Object>");
    }
    out.push_str("</Delete>");
    out
}

/// Escapes text content: `& < >` as entities, and control characters (including
/// CR, LF and TAB, which XML would otherwise normalise) as character references.
/// Characters XML 1.0 cannot carry at all (other controls) are still written as
/// references; S3 may refuse such keys.
fn escape_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c if c.is_control() && (c as u32) < 0x20 => {
                out.push_str(&format!("&#{};", c as u32));
            }
            c => out.push(c),
        }
    }
}

fn names(path: &[String]) -> Vec<&str> {
    path.iter().map(String::as_str).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Modelled on the first ListObjectsV2 sample response in the AWS S3 API reference.
    const AWS_SAMPLE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
    <Name>bucket</Name>
    <Prefix/>
    <KeyCount>205</KeyCount>
    <MaxKeys>1000</MaxKeys>
    <IsTruncated>false</IsTruncated>
    <Contents>
        <Key>my-image.jpg</Key>
        <LastModified>2009-10-12T17:50:30.000Z</LastModified>
        <ETag>"fba9dede5f27731c9771645a39863328"</ETag>
        <Size>434234</Size>
        <StorageClass>STANDARD</StorageClass>
    </Contents>
    <Contents>
        <Key>my-third-image.jpg</Key>
        <LastModified>2009-10-12T17:50:30.000Z</LastModified>
        <ETag>"1b2cf535f27731c974343645a3985328"</ETag>
        <Size>64994</Size>
        <StorageClass>STANDARD_IA</StorageClass>
    </Contents>
</ListBucketResult>"#;

    /// Modelled on the AWS sample that lists with a delimiter and max-keys=3.
    const AWS_TRUNCATED: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Name>bucket</Name>
  <Prefix></Prefix>
  <NextContinuationToken>1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=</NextContinuationToken>
  <KeyCount>3</KeyCount>
  <MaxKeys>3</MaxKeys>
  <Delimiter>/</Delimiter>
  <IsTruncated>true</IsTruncated>
  <Contents>
    <Key>ExampleObject.txt</Key>
    <LastModified>2013-09-17T18:07:53.000Z</LastModified>
    <ETag>"599bab3ed2c697f1d26842727561fd94"</ETag>
    <Size>857</Size>
    <StorageClass>REDUCED_REDUNDANCY</StorageClass>
  </Contents>
  <CommonPrefixes>
    <Prefix>photos/</Prefix>
  </CommonPrefixes>
  <CommonPrefixes>
    <Prefix>videos/</Prefix>
  </CommonPrefixes>
</ListBucketResult>"#;

    /// SeaweedFS / MinIO style: no XML declaration, no namespace, Owner blocks, one line.
    const SEAWEED_STYLE: &str = "<ListBucketResult><Name>backups</Name><Prefix>fw1/</Prefix>\
        <ContinuationToken>fw1/a</ContinuationToken><KeyCount>2</KeyCount><MaxKeys>1000</MaxKeys>\
        <IsTruncated>false</IsTruncated><Contents><Key>fw1/01934fab-7c3e-7a1b-9d2e-0123456789ab.tar.gz</Key>\
        <ETag>&#34;d41d8cd98f00b204e9800998ecf8427e-3&#34;</ETag><Size>15728640</Size>\
        <Owner><ID>0</ID><DisplayName>root</DisplayName></Owner>\
        <LastModified>2025-01-02T03:04:05Z</LastModified><StorageClass>STANDARD</StorageClass></Contents>\
        <Contents><Key>fw1/empty</Key><LastModified>2025-01-02T03:04:06Z</LastModified>\
        <ETag>\"d41d8cd98f00b204e9800998ecf8427e\"</ETag><Size>0</Size></Contents></ListBucketResult>";

    fn contents(key: &str, size: &str) -> String {
        format!(
            "<Contents><Key>{key}</Key><LastModified>2025-01-01T00:00:00.000Z</LastModified>\
             <ETag>\"x\"</ETag><Size>{size}</Size></Contents>"
        )
    }

    fn listing(body: &str, truncated: bool) -> String {
        format!(
            "<ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
             <IsTruncated>{truncated}</IsTruncated>{body}</ListBucketResult>"
        )
    }

    #[test]
    fn aws_sample_listing() {
        let page = parse_list_objects_v2(AWS_SAMPLE.as_bytes()).unwrap();
        assert_eq!(page.next_continuation_token, None);
        assert_eq!(
            page.objects,
            vec![
                Object {
                    key: "my-image.jpg".into(),
                    size: 434_234,
                    last_modified: "2009-10-12T17:50:30.000Z".into(),
                    etag: "\"fba9dede5f27731c9771645a39863328\"".into(),
                },
                Object {
                    key: "my-third-image.jpg".into(),
                    size: 64_994,
                    last_modified: "2009-10-12T17:50:30.000Z".into(),
                    etag: "\"1b2cf535f27731c974343645a3985328\"".into(),
                },
            ]
        );
    }

    #[test]
    fn truncated_page_has_token_and_ignores_common_prefixes() {
        let page = parse_list_objects_v2(AWS_TRUNCATED.as_bytes()).unwrap();
        assert_eq!(
            page.next_continuation_token.as_deref(),
            Some("1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=")
        );
        assert_eq!(page.objects.len(), 1);
        assert_eq!(page.objects[0].key, "ExampleObject.txt");
        assert_eq!(page.objects[0].size, 857);
    }

    #[test]
    fn token_ignored_when_not_truncated() {
        let xml = "<ListBucketResult><IsTruncated>false</IsTruncated>\
                   <NextContinuationToken>zzz</NextContinuationToken></ListBucketResult>";
        let page = parse_list_objects_v2(xml.as_bytes()).unwrap();
        assert_eq!(page, ListPage::default());
    }

    #[test]
    fn truncated_without_token_is_an_error() {
        let xml = listing(&contents("a", "1"), true);
        assert_eq!(
            parse_list_objects_v2(xml.as_bytes()),
            Err(XmlError::MissingField("NextContinuationToken"))
        );
        let xml = "<ListBucketResult><IsTruncated>true</IsTruncated>\
                   <NextContinuationToken></NextContinuationToken></ListBucketResult>";
        assert_eq!(
            parse_list_objects_v2(xml.as_bytes()),
            Err(XmlError::MissingField("NextContinuationToken"))
        );
    }

    #[test]
    fn seaweedfs_style_without_namespace() {
        let page = parse_list_objects_v2(SEAWEED_STYLE.as_bytes()).unwrap();
        assert_eq!(page.next_continuation_token, None);
        assert_eq!(page.objects.len(), 2);
        assert_eq!(
            page.objects[0],
            Object {
                key: "fw1/01934fab-7c3e-7a1b-9d2e-0123456789ab.tar.gz".into(),
                size: 15_728_640,
                last_modified: "2025-01-02T03:04:05Z".into(),
                etag: "\"d41d8cd98f00b204e9800998ecf8427e-3\"".into(),
            }
        );
        assert_eq!(page.objects[1].size, 0);
        assert_eq!(page.objects[1].key, "fw1/empty");
    }

    #[test]
    fn prefixed_namespace() {
        let xml = "<s3:ListBucketResult xmlns:s3=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
                   <s3:IsTruncated>false</s3:IsTruncated><s3:Contents><s3:Key>k</s3:Key>\
                   <s3:Size>7</s3:Size></s3:Contents></s3:ListBucketResult>";
        let page = parse_list_objects_v2(xml.as_bytes()).unwrap();
        assert_eq!(page.objects[0].key, "k");
        assert_eq!(page.objects[0].size, 7);
        assert_eq!(page.objects[0].etag, "");
    }

    #[test]
    fn escaped_keys() {
        let body = [
            contents("a&amp;b &lt;c&gt; &quot;d&quot; &apos;e&apos;", "1"),
            contents("caf&#xE9;/&#26085;&#26412;", "2"),
            contents("<![CDATA[raw <cdata> & stuff]]>", "3"),
            contents(" leading and trailing ", "4"),
            contents("line&#13;&#10;break", "5"),
            contents("Grüße 🎉.tar.gz", "6"),
        ]
        .concat();
        let page = parse_list_objects_v2(listing(&body, false).as_bytes()).unwrap();
        let keys: Vec<&str> = page.objects.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "a&b <c> \"d\" 'e'",
                "café/日本",
                "raw <cdata> & stuff",
                " leading and trailing ",
                "line\r\nbreak",
                "Grüße 🎉.tar.gz",
            ]
        );
    }

    #[test]
    fn malformed_documents() {
        let cases: &[&[u8]] = &[
            b"",
            b"not xml at all",
            b"<ListBucketResult><Contents><Key>a</Key></ListBucketResult>",
            b"<ListBucketResult><Contents><Key>a</Key><Size>1</Size></Contents>",
            b"<ListBucketResult><Contents><Key>a&bogus;</Key><Size>1</Size></Contents></ListBucketResult>",
            b"<ListBucketResult><Contents><Key>a&#0;</Key><Size>1</Size></Contents></ListBucketResult>",
            b"<ListBucketResult><Contents><Key>a & b</Key><Size>1</Size></Contents></ListBucketResult>",
            b"<ListBucketResult><Contents><Key>\xff\xfe</Key><Size>1</Size></Contents></ListBucketResult>",
            b"<ListBucketResult></ListBucketResult><ListBucketResult></ListBucketResult>",
            b"<!DOCTYPE x [<!ENTITY a \"b\">]><ListBucketResult></ListBucketResult>",
            b"<ListBucketResult><Contents><Key>a</Key><Size>1</Size></Contents></Other>",
            b"<ListBucketResult><Contents><Key>a</Key><Size>1</Size></Contents></ListBucketResult",
            b"junk<ListBucketResult><IsTruncated>false</IsTruncated></ListBucketResult>",
            b"<ListBucketResult><IsTruncated>false</IsTruncated></ListBucketResult>junk",
        ];
        for case in cases {
            match parse_list_objects_v2(case) {
                Err(XmlError::Malformed(_)) => {}
                other => panic!("{:?} gave {other:?}", String::from_utf8_lossy(case)),
            }
        }
    }

    #[test]
    fn missing_fields_and_bad_values() {
        let no_size = listing("<Contents><Key>a</Key></Contents>", false);
        assert_eq!(
            parse_list_objects_v2(no_size.as_bytes()),
            Err(XmlError::MissingField("Size"))
        );
        let no_key = listing("<Contents><Size>1</Size></Contents>", false);
        assert_eq!(
            parse_list_objects_v2(no_key.as_bytes()),
            Err(XmlError::MissingField("Key"))
        );
        let empty_key = listing(&contents("", "1"), false);
        assert_eq!(
            parse_list_objects_v2(empty_key.as_bytes()),
            Err(XmlError::MissingField("Key"))
        );
        for size in [
            "12abc",
            "-1",
            "+5",
            "1.5",
            "",
            "1 2",
            "18446744073709551616",
            "0x10",
        ] {
            let xml = listing(&contents("a", size), false);
            assert_eq!(
                parse_list_objects_v2(xml.as_bytes()),
                Err(XmlError::InvalidValue("Size")),
                "size {size:?}"
            );
        }
        let max = listing(&contents("a", " 18446744073709551615 "), false);
        assert_eq!(
            parse_list_objects_v2(max.as_bytes()).unwrap().objects[0].size,
            u64::MAX
        );
        let xml = "<ListBucketResult><IsTruncated>yes</IsTruncated></ListBucketResult>";
        assert_eq!(
            parse_list_objects_v2(xml.as_bytes()),
            Err(XmlError::InvalidValue("IsTruncated"))
        );
        // IsTruncated is required: without it a short page could end a listing silently.
        let xml = format!(
            "<ListBucketResult>{}</ListBucketResult>",
            contents("a", "1")
        );
        assert_eq!(
            parse_list_objects_v2(xml.as_bytes()),
            Err(XmlError::MissingField("IsTruncated"))
        );
        let xml = "<ListMultipartUploadsResult></ListMultipartUploadsResult>";
        assert_eq!(
            parse_list_multipart_uploads(xml.as_bytes()),
            Err(XmlError::MissingField("IsTruncated"))
        );
        // A text field holding an element is refused.
        let xml = listing(
            "<Contents><Key>a<b/>c</Key><Size>1</Size></Contents>",
            false,
        );
        assert!(matches!(
            parse_list_objects_v2(xml.as_bytes()),
            Err(XmlError::Malformed(_))
        ));
    }

    #[test]
    fn wrong_root_and_error_document() {
        let err = b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>NoSuchBucket</Code>\
                    <Message>The specified bucket does not exist</Message>\
                    <BucketName>nope</BucketName><RequestId>4442587FB7D0A2F9</RequestId></Error>";
        assert_eq!(
            parse_list_objects_v2(err),
            Err(XmlError::UnexpectedRoot("Error".into()))
        );
        assert_eq!(
            parse_initiate_multipart(err),
            Err(XmlError::UnexpectedRoot("Error".into()))
        );
        assert_eq!(
            parse_error(err),
            Some(S3Error {
                code: "NoSuchBucket".into(),
                message: "The specified bucket does not exist".into(),
            })
        );
    }

    #[test]
    fn too_many_entries() {
        let ok = listing(&contents("a", "1").repeat(MAX_ENTRIES), false);
        assert_eq!(
            parse_list_objects_v2(ok.as_bytes()).unwrap().objects.len(),
            MAX_ENTRIES
        );
        let over = listing(&contents("a", "1").repeat(MAX_ENTRIES + 1), false);
        assert_eq!(
            parse_list_objects_v2(over.as_bytes()),
            Err(XmlError::TooManyEntries)
        );
    }

    #[test]
    fn oversize_key_and_fields() {
        let ok = listing(&contents(&"k".repeat(MAX_KEY_LEN), "1"), false);
        assert_eq!(
            parse_list_objects_v2(ok.as_bytes()).unwrap().objects[0]
                .key
                .len(),
            MAX_KEY_LEN
        );
        let long = listing(&contents(&"k".repeat(MAX_KEY_LEN + 1), "1"), false);
        assert_eq!(
            parse_list_objects_v2(long.as_bytes()),
            Err(XmlError::TooLong {
                field: "Key",
                limit: MAX_KEY_LEN
            })
        );
        // The limit applies to the unescaped key, multi-byte characters included.
        let long = listing(&contents(&"é".repeat(513), "1"), false);
        assert!(matches!(
            parse_list_objects_v2(long.as_bytes()),
            Err(XmlError::TooLong { field: "Key", .. })
        ));
        let long = listing(&contents(&"&amp;".repeat(MAX_KEY_LEN + 1), "1"), false);
        assert!(matches!(
            parse_list_objects_v2(long.as_bytes()),
            Err(XmlError::TooLong { field: "Key", .. })
        ));
        let token = format!(
            "<ListBucketResult><IsTruncated>true</IsTruncated>\
             <NextContinuationToken>{}</NextContinuationToken></ListBucketResult>",
            "t".repeat(MAX_FIELD_LEN + 1)
        );
        assert!(matches!(
            parse_list_objects_v2(token.as_bytes()),
            Err(XmlError::TooLong {
                field: "NextContinuationToken",
                ..
            })
        ));
    }

    #[test]
    fn size_and_depth_bounds() {
        let big = vec![b' '; MAX_DOCUMENT_LEN + 1];
        assert_eq!(parse_list_objects_v2(&big), Err(XmlError::TooLarge));
        let deep = format!(
            "<ListBucketResult>{}{}</ListBucketResult>",
            "<a>".repeat(MAX_DEPTH),
            "</a>".repeat(MAX_DEPTH)
        );
        assert_eq!(
            parse_list_objects_v2(deep.as_bytes()),
            Err(XmlError::TooLarge)
        );
    }

    #[test]
    fn encoding_type_url_is_refused() {
        let xml = "<ListBucketResult><EncodingType>url</EncodingType>\
                   <IsTruncated>false</IsTruncated></ListBucketResult>";
        assert_eq!(
            parse_list_objects_v2(xml.as_bytes()),
            Err(XmlError::Unsupported("EncodingType"))
        );
    }

    #[test]
    fn initiate_multipart() {
        let xml = br#"<?xml version="1.0" encoding="UTF-8"?>
<InitiateMultipartUploadResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Bucket>example-bucket</Bucket>
  <Key>example-object</Key>
  <UploadId>VXBsb2FkIElEIGZvciA2aWWpbmcncyBteS1tb3ZpZS5tMnRzIHVwbG9hZA</UploadId>
</InitiateMultipartUploadResult>"#;
        assert_eq!(
            parse_initiate_multipart(xml).unwrap(),
            "VXBsb2FkIElEIGZvciA2aWWpbmcncyBteS1tb3ZpZS5tMnRzIHVwbG9hZA"
        );
        let seaweed = b"<InitiateMultipartUploadResult><Bucket>b</Bucket><Key>k</Key>\
                        <UploadId>0193abcd_ef01</UploadId></InitiateMultipartUploadResult>";
        assert_eq!(parse_initiate_multipart(seaweed).unwrap(), "0193abcd_ef01");
        let missing =
            b"<InitiateMultipartUploadResult><Bucket>b</Bucket></InitiateMultipartUploadResult>";
        assert_eq!(
            parse_initiate_multipart(missing),
            Err(XmlError::MissingField("UploadId"))
        );
        let empty = b"<InitiateMultipartUploadResult><UploadId/></InitiateMultipartUploadResult>";
        assert_eq!(
            parse_initiate_multipart(empty),
            Err(XmlError::MissingField("UploadId"))
        );
        assert!(matches!(
            parse_initiate_multipart(b"<InitiateMultipartUploadResult><UploadId>x"),
            Err(XmlError::Malformed(_))
        ));
    }

    #[test]
    fn copy_part_result() {
        let xml = br#"<?xml version="1.0" encoding="UTF-8"?>
<CopyPartResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <LastModified>2011-04-11T20:34:56.000Z</LastModified>
  <ETag>"9b2cf535f27731c974343645a3985328"</ETag>
</CopyPartResult>"#;
        assert_eq!(
            parse_copy_part(xml).unwrap(),
            "\"9b2cf535f27731c974343645a3985328\""
        );
        assert_eq!(
            parse_copy_part(b"<CopyPartResult><LastModified>x</LastModified></CopyPartResult>"),
            Err(XmlError::MissingField("ETag"))
        );
        assert!(parse_copy_part(b"<Error><Code>InternalError</Code></Error>").is_err());
    }

    /// Modelled on the ListMultipartUploads sample response in the AWS S3 API reference.
    const AWS_UPLOADS: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Bucket>bucket</Bucket>
  <KeyMarker></KeyMarker>
  <UploadIdMarker></UploadIdMarker>
  <NextKeyMarker>my-movie.m2ts</NextKeyMarker>
  <NextUploadIdMarker>YW55IGlkZWEgd2h5IGVsdmluZydzIHVwbG9hZCBmYWlsZWQ</NextUploadIdMarker>
  <MaxUploads>3</MaxUploads>
  <IsTruncated>true</IsTruncated>
  <Upload>
    <Key>my-divisor</Key>
    <UploadId>XMgbGlrZSBlbHZpbmcncyBub3QgaGF2aW5nIG11Y2ggbHVjaw</UploadId>
    <Initiator>
      <ID>arn:aws:iam::111122223333:user/user1-11111a31-17b5-4fb7-9df5-b111111f13de</ID>
      <DisplayName>user1-11111a31-17b5-4fb7-9df5-b111111f13de</DisplayName>
    </Initiator>
    <Owner>
      <ID>75aa57f09aa0c8caeab4f8c24e99d10f8e7faeebf76c078efc7c6caea54ba06a</ID>
      <DisplayName>OwnerDisplayName</DisplayName>
    </Owner>
    <StorageClass>STANDARD</StorageClass>
    <Initiated>2010-11-10T20:48:33.000Z</Initiated>
  </Upload>
  <Upload>
    <Key>my-movie.m2ts</Key>
    <UploadId>VXBsb2FkIElEIGZvciBlbHZpbmcncyBteS1tb3ZpZS5tMnRzIHVwbG9hZA</UploadId>
    <Initiator>
      <ID>b1d16700c70b0b05597d7acd6a3f92be</ID>
      <DisplayName>InitiatorDisplayName</DisplayName>
    </Initiator>
    <Owner>
      <ID>b1d16700c70b0b05597d7acd6a3f92be</ID>
      <DisplayName>OwnerDisplayName</DisplayName>
    </Owner>
    <StorageClass>STANDARD</StorageClass>
    <Initiated>2010-11-10T20:48:33.000Z</Initiated>
  </Upload>
</ListMultipartUploadsResult>"#;

    #[test]
    fn list_multipart_uploads() {
        let page = parse_list_multipart_uploads(AWS_UPLOADS.as_bytes()).unwrap();
        assert_eq!(
            page.next_markers,
            Some(NextMarkers {
                key_marker: "my-movie.m2ts".into(),
                upload_id_marker: "YW55IGlkZWEgd2h5IGVsdmluZydzIHVwbG9hZCBmYWlsZWQ".into(),
            })
        );
        assert_eq!(
            page.uploads,
            vec![
                Upload {
                    key: "my-divisor".into(),
                    upload_id: "XMgbGlrZSBlbHZpbmcncyBub3QgaGF2aW5nIG11Y2ggbHVjaw".into(),
                    initiated: "2010-11-10T20:48:33.000Z".into(),
                },
                Upload {
                    key: "my-movie.m2ts".into(),
                    upload_id: "VXBsb2FkIElEIGZvciBlbHZpbmcncyBteS1tb3ZpZS5tMnRzIHVwbG9hZA".into(),
                    initiated: "2010-11-10T20:48:33.000Z".into(),
                },
            ]
        );
    }

    #[test]
    fn list_multipart_uploads_edge_cases() {
        // Not truncated: markers are dropped even if present (SeaweedFS sends them empty).
        let xml = b"<ListMultipartUploadsResult><Bucket>b</Bucket><NextKeyMarker></NextKeyMarker>\
                    <NextUploadIdMarker></NextUploadIdMarker><IsTruncated>false</IsTruncated>\
                    <Upload><Key>fw1/a&amp;b.tar.gz</Key><UploadId>u1</UploadId></Upload>\
                    </ListMultipartUploadsResult>";
        let page = parse_list_multipart_uploads(xml).unwrap();
        assert_eq!(page.next_markers, None);
        assert_eq!(page.uploads[0].key, "fw1/a&b.tar.gz");
        assert_eq!(page.uploads[0].initiated, "");
        // No uploads at all.
        let xml = b"<ListMultipartUploadsResult><IsTruncated>false</IsTruncated></ListMultipartUploadsResult>";
        assert_eq!(
            parse_list_multipart_uploads(xml).unwrap(),
            MultipartPage::default()
        );
        // Truncated without NextKeyMarker.
        let xml = b"<ListMultipartUploadsResult><IsTruncated>true</IsTruncated></ListMultipartUploadsResult>";
        assert_eq!(
            parse_list_multipart_uploads(xml),
            Err(XmlError::MissingField("NextKeyMarker"))
        );
        // Upload without UploadId.
        let xml = b"<ListMultipartUploadsResult><Upload><Key>k</Key></Upload></ListMultipartUploadsResult>";
        assert_eq!(
            parse_list_multipart_uploads(xml),
            Err(XmlError::MissingField("UploadId"))
        );
        // Too many uploads.
        let one = "<Upload><Key>k</Key><UploadId>u</UploadId></Upload>";
        let xml = format!(
            "<ListMultipartUploadsResult>{}</ListMultipartUploadsResult>",
            one.repeat(MAX_ENTRIES + 1)
        );
        assert_eq!(
            parse_list_multipart_uploads(xml.as_bytes()),
            Err(XmlError::TooManyEntries)
        );
        assert_eq!(
            parse_list_multipart_uploads(AWS_SAMPLE.as_bytes()),
            Err(XmlError::UnexpectedRoot("ListBucketResult".into()))
        );
    }

    #[test]
    fn error_documents() {
        let slow = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
        assert_eq!(
            parse_error(slow),
            Some(S3Error {
                code: "SlowDown".into(),
                message: "Please reduce your request rate.".into(),
            })
        );
        let ns = b"<Error xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Code>AccessDenied</Code></Error>";
        assert_eq!(
            parse_error(ns),
            Some(S3Error {
                code: "AccessDenied".into(),
                message: String::new(),
            })
        );
        let wrapped = b"<ErrorResponse><Error><Code>InvalidAccessKeyId</Code><Message>a &lt; b</Message></Error></ErrorResponse>";
        assert_eq!(
            parse_error(wrapped),
            Some(S3Error {
                code: "InvalidAccessKeyId".into(),
                message: "a < b".into(),
            })
        );
        // A long message is cut, not refused.
        let long = format!(
            "<Error><Code>InternalError</Code><Message>{}</Message></Error>",
            "é".repeat(MAX_ERROR_TEXT_LEN)
        );
        let e = parse_error(long.as_bytes()).unwrap();
        assert_eq!(e.code, "InternalError");
        assert_eq!(e.message.len(), MAX_ERROR_TEXT_LEN);
        // A UTF-8 byte order mark is accepted.
        let bom = b"\xEF\xBB\xBF<Error><Code>NoSuchKey</Code></Error>";
        assert_eq!(
            parse_error(bom).map(|e| e.code).as_deref(),
            Some("NoSuchKey")
        );
        // Not error documents.
        assert_eq!(parse_error(b""), None);
        assert_eq!(
            parse_error(b"<html><body>502 Bad Gateway</body></html>"),
            None
        );
        assert_eq!(
            parse_error(b"<Error><Message>no code</Message></Error>"),
            None
        );
        assert_eq!(parse_error(b"<Error><Code>X</Code>"), None);
        assert_eq!(parse_error(AWS_SAMPLE.as_bytes()), None);
        assert_eq!(parse_error(b"<Error><Code>  </Code></Error>"), None);
        assert_eq!(parse_error(b"502 <Error><Code>X</Code></Error>"), None);
    }

    #[test]
    fn complete_multipart() {
        assert_eq!(
            complete_multipart_body(&[
                (1, "\"a54357aff0632cce46d942af68356b38\""),
                (2, "0c78aef83f66abc1fa1e8477f296d394"),
                (3, "\"x&<y>\""),
            ]),
            "<CompleteMultipartUpload>\
             <Part><PartNumber>1</PartNumber><ETag>\"a54357aff0632cce46d942af68356b38\"</ETag></Part>\
             <Part><PartNumber>2</PartNumber><ETag>\"0c78aef83f66abc1fa1e8477f296d394\"</ETag></Part>\
             <Part><PartNumber>3</PartNumber><ETag>\"x&amp;&lt;y&gt;\"</ETag></Part>\
             </CompleteMultipartUpload>"
        );
        assert_eq!(
            complete_multipart_body(&[]),
            "<CompleteMultipartUpload></CompleteMultipartUpload>"
        );
    }

    #[test]
    fn delete_objects() {
        let body = delete_objects_body(&["fw1/a.tar.gz", "a&b <c>.txt", "cr\rlf\n", "日本"]);
        assert_eq!(
            body,
            "<Delete><Quiet>true</Quiet>\
             <Object><Key>fw1/a.tar.gz</Key></Object>\
             <Object><Key>a&amp;b &lt;c&gt;.txt</Key></Object>\
             <Object><Key>cr&#13;lf&#10;</Key></Object>\
             <Object><Key>日本</Key></Object>\
             </Delete>"
        );
        assert_eq!(
            delete_objects_body(&[]),
            "<Delete><Quiet>true</Quiet></Delete>"
        );
    }

    /// What the builders write, the parsers read back unchanged.
    #[test]
    fn escaping_round_trips() {
        let keys = ["a&b", "<x>", " sp ", "cr\r\nlf\t", "q\"'", "ünï"];
        let body = delete_objects_body(&keys);
        let mut seen = Vec::new();
        walk(
            body.as_bytes(),
            &["Delete"],
            |p| (p.len() == 3).then_some(MAX_KEY_LEN),
            |p, t| {
                if p.len() == 3 {
                    seen.push(t.map(|t| t.value).unwrap_or_default());
                }
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(seen, keys);
    }

    /// Arbitrary bytes never panic.
    #[test]
    fn garbage_never_panics() {
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let alphabet: &[u8] =
            b"<>/&;#x=\"' ?!-[]CDATAKeySizeContentsListBucketResultIsTruncated\xc3\xa9\xff01";
        for _ in 0..2000 {
            let mut doc = Vec::new();
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 200) as usize;
            for _ in 0..len {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                doc.push(alphabet[(seed % alphabet.len() as u64) as usize]);
            }
            let _ = parse_list_objects_v2(&doc);
            let _ = parse_list_multipart_uploads(&doc);
            let _ = parse_initiate_multipart(&doc);
            let _ = parse_error(&doc);
            let mut framed = b"<ListBucketResult><Contents><Key>".to_vec();
            framed.extend_from_slice(&doc);
            let _ = parse_list_objects_v2(&framed);
        }
    }
}
