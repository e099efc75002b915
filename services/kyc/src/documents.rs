//! KYC documents: what a submission must look like, and the automatic rule.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use finflow_platform::ApiError;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

/// Largest uploaded document, in bytes.
pub const MAX_DOCUMENT_BYTES: usize = 2 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DocumentType {
    Passport,
    NationalId,
    DrivingLicense,
}

impl DocumentType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Passport => "passport",
            Self::NationalId => "national_id",
            Self::DrivingLicense => "driving_license",
        }
    }
}

/// An uploaded file, base64 in JSON.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upload {
    /// `image/jpeg`, `image/png` or `application/pdf`: what the file's first bytes say it is.
    pub content_type: String,
    /// The file, base64 (standard alphabet, padded), 1 byte to 2 MiB decoded, starting
    /// with the JPEG, PNG or PDF signature `content_type` names.
    pub data_base64: String,
}

/// Canonical padded base64 after a file's first characters.
const BASE64_REST: &str =
    r"([A-Za-z0-9+/]{4})*([A-Za-z0-9+/][AQgw]==|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=)?$";

/// Each content type with the base64 its signature ([`sniff`]) begins with, up to the
/// next whole base64 group: JPEG `FF D8 FF`, PNG `89 50 4E 47 0D 0A 1A 0A`, PDF `%PDF-`.
const SIGNATURES: [(&str, &str, &str); 3] = [
    ("image/jpeg", "^/9j/", "/9j/4AAQ"),
    (
        "image/png",
        "^iVBORw0KGg[o-r][A-Za-z0-9+/]",
        "iVBORw0KGgoAAAANSUhEUg==",
    ),
    (
        "application/pdf",
        "^JVBERi[0-3][A-Za-z0-9+/]",
        "JVBERi0xLjcK",
    ),
];

/// One shape per content type, so a document states that the data must begin with the
/// signature its `content_type` names (which the handler checks).
impl utoipa::PartialSchema for Upload {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, OneOfBuilder, Type};
        let mut one_of = OneOfBuilder::new();
        for (content_type, signature, example) in SIGNATURES {
            one_of = one_of.item(
                ObjectBuilder::new()
                    .property(
                        "content_type",
                        ObjectBuilder::new()
                            .schema_type(Type::String)
                            .enum_values(Some([content_type])),
                    )
                    .required("content_type")
                    .property(
                        "data_base64",
                        ObjectBuilder::new()
                            .schema_type(Type::String)
                            .description(Some(
                                "The file, base64 (standard alphabet, padded), 2 MiB at most decoded",
                            ))
                            .min_length(Some(4))
                            .max_length(Some(2_796_204))
                            .pattern(Some(format!("{signature}{BASE64_REST}")))
                            .examples([example]),
                    )
                    .required("data_base64")
                    .additional_properties(Some(AdditionalProperties::FreeForm(false))),
            );
        }
        one_of
            .description(Some("An uploaded file, base64 in JSON"))
            .into()
    }
}

impl utoipa::ToSchema for Upload {
    fn name() -> std::borrow::Cow<'static, str> {
        "Upload".into()
    }
}

/// `POST /api/v1/kyc/submit`: a document number and either a URL or a file.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Submission {
    pub document_type: DocumentType,
    pub document_number: String,
    pub document_url: Option<String>,
    pub document_file: Option<Upload>,
}

/// The body of `POST /api/v1/kyc/submit` as documented (documentation only: the handler
/// reads a [`Submission`] and [`Submission::check`] enforces these shapes): the number's
/// form depends on the document type, and exactly one of `document_url` and
/// `document_file` is given.
#[allow(dead_code)]
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub enum SubmissionShape {
    PassportByUrl(PassportByUrl),
    PassportByFile(PassportByFile),
    NationalIdByUrl(NationalIdByUrl),
    NationalIdByFile(NationalIdByFile),
    DrivingLicenseByUrl(DrivingLicenseByUrl),
    DrivingLicenseByFile(DrivingLicenseByFile),
}

/// `document_type` `passport` (documentation only).
#[allow(dead_code)]
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PassportType {
    Passport,
}

/// A passport submission with a document URL (documentation only).
#[allow(dead_code)]
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"document_type": "passport", "document_number": "AB1234567", "document_url": "https://docs.example.com/id.pdf"}))]
pub struct PassportByUrl {
    pub document_type: PassportType,
    /// 6 to 9 letters and digits; whitespace anywhere is removed and letters are upper-cased.
    #[schema(
        pattern = r"^[\t-\r \x85\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]*([A-Za-z0-9][\t-\r \x85\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]*){6,9}$",
        example = "AB1234567"
    )]
    pub document_number: String,
    /// Where the document is: `https://`, no whitespace, at most 2048 bytes.
    #[schema(
        max_length = 2048,
        pattern = r"^https://[^\x00\t-\r \x85\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]*$",
        example = "https://docs.example.com/id.pdf"
    )]
    pub document_url: String,
}

/// A passport submission with a document file (documentation only).
#[allow(dead_code)]
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"document_type": "passport", "document_number": "AB1234567", "document_file": {"content_type": "application/pdf", "data_base64": "JVBERi0xLjcK"}}))]
pub struct PassportByFile {
    pub document_type: PassportType,
    /// 6 to 9 letters and digits; whitespace anywhere is removed and letters are upper-cased.
    #[schema(
        pattern = r"^[\t-\r \x85\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]*([A-Za-z0-9][\t-\r \x85\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]*){6,9}$",
        example = "AB1234567"
    )]
    pub document_number: String,
    pub document_file: Upload,
}

/// `document_type` `national_id` (documentation only).
#[allow(dead_code)]
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NationalIdType {
    NationalId,
}

/// A national id submission with a document URL (documentation only).
#[allow(dead_code)]
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"document_type": "national_id", "document_number": "X12345678", "document_url": "https://docs.example.com/id.pdf"}))]
pub struct NationalIdByUrl {
    pub document_type: NationalIdType,
    /// 5 to 20 letters and digits; whitespace anywhere is removed and letters are upper-cased.
    #[schema(
        pattern = r"^[\t-\r \x85\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]*([A-Za-z0-9][\t-\r \x85\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]*){5,20}$",
        example = "X12345678"
    )]
    pub document_number: String,
    /// Where the document is: `https://`, no whitespace, at most 2048 bytes.
    #[schema(
        max_length = 2048,
        pattern = r"^https://[^\x00\t-\r \x85\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]*$",
        example = "https://docs.example.com/id.pdf"
    )]
    pub document_url: String,
}

/// A national id submission with a document file (documentation only).
#[allow(dead_code)]
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"document_type": "national_id", "document_number": "X12345678", "document_file": {"content_type": "application/pdf", "data_base64": "JVBERi0xLjcK"}}))]
pub struct NationalIdByFile {
    pub document_type: NationalIdType,
    /// 5 to 20 letters and digits; whitespace anywhere is removed and letters are upper-cased.
    #[schema(
        pattern = r"^[\t-\r \x85\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]*([A-Za-z0-9][\t-\r \x85\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]*){5,20}$",
        example = "X12345678"
    )]
    pub document_number: String,
    pub document_file: Upload,
}

/// `document_type` `driving_license` (documentation only).
#[allow(dead_code)]
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DrivingLicenseType {
    DrivingLicense,
}

/// A driving license submission with a document URL (documentation only).
#[allow(dead_code)]
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"document_type": "driving_license", "document_number": "D-1234-5678", "document_url": "https://docs.example.com/id.pdf"}))]
pub struct DrivingLicenseByUrl {
    pub document_type: DrivingLicenseType,
    /// 5 to 20 letters, digits and `-`; whitespace anywhere is removed and letters are upper-cased.
    #[schema(
        pattern = r"^[\t-\r \x85\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]*([A-Za-z0-9-][\t-\r \x85\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]*){5,20}$",
        example = "D-1234-5678"
    )]
    pub document_number: String,
    /// Where the document is: `https://`, no whitespace, at most 2048 bytes.
    #[schema(
        max_length = 2048,
        pattern = r"^https://[^\x00\t-\r \x85\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]*$",
        example = "https://docs.example.com/id.pdf"
    )]
    pub document_url: String,
}

/// A driving license submission with a document file (documentation only).
#[allow(dead_code)]
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"document_type": "driving_license", "document_number": "D-1234-5678", "document_file": {"content_type": "application/pdf", "data_base64": "JVBERi0xLjcK"}}))]
pub struct DrivingLicenseByFile {
    pub document_type: DrivingLicenseType,
    /// 5 to 20 letters, digits and `-`; whitespace anywhere is removed and letters are upper-cased.
    #[schema(
        pattern = r"^[\t-\r \x85\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]*([A-Za-z0-9-][\t-\r \x85\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]*){5,20}$",
        example = "D-1234-5678"
    )]
    pub document_number: String,
    pub document_file: Upload,
}

/// A checked submission, ready to store.
#[derive(Debug, Clone)]
pub struct Checked {
    pub document_type: DocumentType,
    pub document_number: String,
    pub document_url: Option<String>,
    pub file: Option<CheckedFile>,
}

#[derive(Debug, Clone)]
pub struct CheckedFile {
    pub content_type: &'static str,
    pub bytes: Vec<u8>,
    pub sha256: Vec<u8>,
}

/// The file types accepted, recognised by their first bytes rather than the declared
/// type alone.
fn sniff(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some("image/jpeg")
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if bytes.starts_with(b"%PDF-") {
        Some("application/pdf")
    } else {
        None
    }
}

impl Submission {
    /// Checks format, sizes and types; the number is normalized to upper case without spaces.
    pub fn check(self) -> Result<Checked, ApiError> {
        let number: String = self
            .document_number
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>()
            .to_uppercase();
        let allowed = |c: char| {
            c.is_ascii_alphanumeric()
                || (self.document_type == DocumentType::DrivingLicense && c == '-')
        };
        let (min, max) = match self.document_type {
            DocumentType::Passport => (6, 9),
            DocumentType::NationalId | DocumentType::DrivingLicense => (5, 20),
        };
        if !(min..=max).contains(&number.len()) || !number.chars().all(allowed) {
            return Err(ApiError::invalid_field(
                "document_number",
                format!(
                    "a {} number has {min} to {max} letters and digits",
                    self.document_type.as_str()
                ),
            ));
        }
        match (&self.document_url, &self.document_file) {
            (None, None) => {
                return Err(ApiError::invalid_field(
                    "document_url",
                    "give a document_url or a document_file",
                ));
            }
            (Some(_), Some(_)) => {
                return Err(ApiError::invalid_field(
                    "document_file",
                    "give a document_url or a document_file, not both",
                ));
            }
            _ => {}
        }
        if let Some(url) = &self.document_url
            && (!url.starts_with("https://")
                || url.len() > 2048
                || url.chars().any(char::is_whitespace))
        {
            return Err(ApiError::invalid_field(
                "document_url",
                "document_url must be an https URL",
            ));
        }
        let file = match self.document_file {
            None => None,
            Some(upload) => {
                // Decoded size is 3/4 of the text: refuse oversized text before decoding it.
                if upload.data_base64.len() > MAX_DOCUMENT_BYTES / 3 * 4 + 4 {
                    return Err(ApiError::invalid_field(
                        "document_file",
                        "the document is larger than 2 MiB",
                    ));
                }
                let bytes = STANDARD
                    .decode(upload.data_base64.as_bytes())
                    .map_err(|_| {
                        ApiError::invalid_field("document_file", "data_base64 is not base64")
                    })?;
                if bytes.is_empty() || bytes.len() > MAX_DOCUMENT_BYTES {
                    return Err(ApiError::invalid_field(
                        "document_file",
                        "the document must be 1 byte to 2 MiB",
                    ));
                }
                let sniffed = sniff(&bytes).ok_or_else(|| {
                    ApiError::invalid_field(
                        "document_file",
                        "only JPEG, PNG and PDF documents are accepted",
                    )
                })?;
                if sniffed != upload.content_type {
                    return Err(ApiError::invalid_field(
                        "document_file",
                        format!("the file is {sniffed}, not {}", upload.content_type),
                    ));
                }
                Some(CheckedFile {
                    content_type: sniffed,
                    sha256: Sha256::digest(&bytes).to_vec(),
                    bytes,
                })
            }
        };
        Ok(Checked {
            document_type: self.document_type,
            document_number: number,
            document_url: self.document_url,
            file,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_documented_signature_pattern_takes_the_files_sniff_takes_for_its_type() {
        let files: [(&str, &[u8]); 3] = [
            ("image/jpeg", &[0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10]),
            ("image/png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"),
            ("application/pdf", b"%PDF-1.7\n"),
        ];
        for (content_type, bytes) in files {
            assert_eq!(sniff(bytes), Some(content_type));
            let encoded = STANDARD.encode(bytes);
            for (other, signature, example) in SIGNATURES {
                let re = regex::Regex::new(&format!("{signature}{BASE64_REST}")).unwrap();
                assert_eq!(
                    re.is_match(&encoded),
                    other == content_type,
                    "{other} {encoded}"
                );
                let decoded = STANDARD.decode(example).unwrap();
                assert_eq!(sniff(&decoded), Some(other), "the example of {other}");
            }
        }
    }

    fn submission(number: &str) -> Submission {
        Submission {
            document_type: DocumentType::Passport,
            document_number: number.into(),
            document_url: Some("https://docs.example.com/p.pdf".into()),
            document_file: None,
        }
    }

    #[test]
    fn a_well_formed_passport_passes_and_is_normalized() {
        assert_eq!(
            submission("ab 12345").check().unwrap().document_number,
            "AB12345"
        );
    }

    #[test]
    fn malformed_numbers_and_urls_are_refused() {
        assert!(submission("12").check().is_err());
        assert!(submission("AB-12345").check().is_err());
        let mut s = submission("AB12345");
        s.document_url = Some("http://insecure.example.com".into());
        assert!(s.clone().check().is_err());
        s.document_url = None;
        assert!(s.check().is_err(), "a URL or a file is required");
    }

    #[test]
    fn uploaded_files_must_be_what_they_claim_and_small() {
        let mut s = submission("AB12345");
        s.document_url = None;
        s.document_file = Some(Upload {
            content_type: "application/pdf".into(),
            data_base64: STANDARD.encode(b"%PDF-1.7 fake but well-typed"),
        });
        assert_eq!(
            s.clone().check().unwrap().file.unwrap().content_type,
            "application/pdf"
        );
        s.document_file = Some(Upload {
            content_type: "image/png".into(),
            data_base64: STANDARD.encode(b"%PDF-1.7"),
        });
        assert!(
            s.clone().check().is_err(),
            "declared type must match the content"
        );
        s.document_file = Some(Upload {
            content_type: "application/pdf".into(),
            data_base64: STANDARD.encode(vec![b'%'; MAX_DOCUMENT_BYTES + 1]),
        });
        assert!(s.check().is_err());
    }
}
