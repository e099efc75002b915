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
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Upload {
    /// `image/jpeg`, `image/png` or `application/pdf`.
    pub content_type: String,
    /// The file, base64 (standard alphabet), at most 2 MiB decoded.
    pub data_base64: String,
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
