//! KYC documents: what a submission must look like, and the automatic rule.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use finflow_platform::ApiError;
use finflow_platform::text::{self, WHITE_SPACE};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::openapi::{Ref, RefOr};

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
    pub const ALL: [Self; 3] = [Self::Passport, Self::NationalId, Self::DrivingLicense];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Passport => "passport",
            Self::NationalId => "national_id",
            Self::DrivingLicense => "driving_license",
        }
    }

    /// Its number's form: from how many to how many characters, letters and digits, and
    /// whether `-` is one of them.
    fn number_rule(self) -> (usize, usize, bool) {
        match self {
            Self::Passport => (6, 9, false),
            Self::NationalId => (5, 20, false),
            Self::DrivingLicense => (5, 20, true),
        }
    }

    /// [`DocumentType::number_rule`] as the API documents it: the number as given, white
    /// space anywhere.
    fn number_pattern(self) -> String {
        let (min, max, dash) = self.number_rule();
        let w = format!("[{WHITE_SPACE}]*");
        if dash {
            // A `-` only between two letters or digits, one at a time: a number of
            // dashes alone, or dashes at its ends, is no number.
            let (more_min, more_max) = (min - 1, max - 1);
            format!(r"^{w}[A-Za-z0-9]({w}-?{w}[A-Za-z0-9]){{{more_min},{more_max}}}{w}$")
        } else {
            format!(r"^{w}([A-Za-z0-9]{w}){{{min},{max}}}$")
        }
    }

    fn number_example(self) -> &'static str {
        match self {
            Self::Passport => "AB1234567",
            Self::NationalId => "X12345678",
            Self::DrivingLicense => "D-1234-5678",
        }
    }
}

/// Longest document URL, in bytes (all of them ASCII).
const MAX_URL_BYTES: usize = 2048;

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

/// A string that can only be `value`: the branch of a `oneOf` it names.
fn only(value: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some([value]))
}

/// One shape per content type, so a document states that the data must begin with the
/// signature its `content_type` names (which the handler checks).
impl utoipa::PartialSchema for Upload {
    fn schema() -> RefOr<Schema> {
        let mut one_of = OneOfBuilder::new();
        for (content_type, signature, example) in SIGNATURES {
            one_of = one_of.item(
                ObjectBuilder::new()
                    .property("content_type", only(content_type))
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

/// The body of `POST /api/v1/kyc/submit` as documented (the handler reads a
/// [`Submission`] and [`Submission::check`] enforces this): one branch per document
/// type, whose number has its own form, and way of giving the document, a URL or a file.
pub struct SubmissionShape;

impl utoipa::PartialSchema for SubmissionShape {
    fn schema() -> RefOr<Schema> {
        let mut one_of = OneOfBuilder::new();
        for kind in DocumentType::ALL {
            let (min, max, dash) = kind.number_rule();
            let number = text::described(
                &format!(
                    "{min} to {max} letters and digits{}; whitespace anywhere is removed and \
                     letters are upper-cased.",
                    if dash {
                        ", a single `-` allowed between two of them (the same number however \
                         its dashes fall)"
                    } else {
                        ""
                    }
                ),
                kind.number_pattern(),
                kind.number_example(),
            )
            .build();
            let url = text::described(
                "Where the document is: `https://`, then printable ASCII without spaces, at \
                 most 2048 characters.",
                r"^https://[!-~]*$".to_owned(),
                "https://docs.example.com/id.pdf",
            )
            .max_length(Some(MAX_URL_BYTES));
            let file: RefOr<Schema> = Ref::from_schema_name("Upload").into();
            let example_file =
                json!({"content_type": "application/pdf", "data_base64": "JVBERi0xLjcK"});
            for (field, document, example) in [
                (
                    "document_url",
                    url.build().into(),
                    json!("https://docs.example.com/id.pdf"),
                ),
                ("document_file", file, example_file),
            ] {
                one_of = one_of.item(
                    ObjectBuilder::new()
                        .property("document_type", only(kind.as_str()))
                        .required("document_type")
                        .property("document_number", number.clone())
                        .required("document_number")
                        .property(field, document)
                        .required(field)
                        .additional_properties(Some(AdditionalProperties::FreeForm(false)))
                        .examples([json!({
                            "document_type": kind.as_str(),
                            "document_number": kind.number_example(),
                            field: example,
                        })]),
                );
            }
        }
        one_of
            .description(Some(
                "A document number, whose form depends on the document type, and exactly one \
                 of `document_url` and `document_file`",
            ))
            .into()
    }
}

impl utoipa::ToSchema for SubmissionShape {
    fn name() -> std::borrow::Cow<'static, str> {
        "SubmissionShape".into()
    }

    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((
            "Upload".to_owned(),
            <Upload as utoipa::PartialSchema>::schema(),
        ));
    }
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
        let (min, max, dash) = self.document_type.number_rule();
        let number: String = self
            .document_number
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        // Upper-cased as ASCII only: `to_uppercase` makes ASCII letters of some others
        // (`ﬀ` is `FF`, `ſ` is `S`), which no document number has.
        let number = number.to_ascii_uppercase();
        let allowed = |c: char| c.is_ascii_alphanumeric() || (dash && c == '-');
        let letters_and_digits = number.chars().filter(char::is_ascii_alphanumeric).count();
        let dashes_between =
            !(number.starts_with('-') || number.ends_with('-') || number.contains("--"));
        if !(min..=max).contains(&letters_and_digits)
            || !number.chars().all(allowed)
            || !dashes_between
        {
            return Err(ApiError::invalid_field(
                "document_number",
                format!(
                    "a {} number has {min} to {max} letters and digits{}",
                    self.document_type.as_str(),
                    if dash {
                        ", a single `-` allowed between two of them"
                    } else {
                        ""
                    }
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
                || url.len() > MAX_URL_BYTES
                || !url.bytes().all(|b| b.is_ascii_graphic()))
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
    use proptest::prelude::*;

    /// `field` of `kind`'s submission by URL, as documented: pattern and length.
    fn documented(kind: DocumentType, field: &str) -> impl Fn(&str) -> bool + use<> {
        let RefOr::T(Schema::OneOf(one_of)) = <SubmissionShape as utoipa::PartialSchema>::schema()
        else {
            panic!("a oneOf");
        };
        let branch = one_of
            .items
            .into_iter()
            .find_map(|item| match item {
                RefOr::T(Schema::Object(o))
                    if o.properties.contains_key("document_url")
                        && serde_json::to_value(&o.properties["document_type"]).unwrap()["enum"]
                            == json!([kind.as_str()]) =>
                {
                    Some(o)
                }
                _ => None,
            })
            .unwrap();
        let RefOr::T(Schema::Object(schema)) = &branch.properties[field] else {
            panic!("{field} inline");
        };
        text::matcher(schema)
    }

    fn by_url(kind: DocumentType, number: &str, url: &str) -> Submission {
        Submission {
            document_type: kind,
            document_number: number.to_owned(),
            document_url: Some(url.to_owned()),
            document_file: None,
        }
    }

    /// Text made of what the rules tell apart: letters and digits, `-`, white space,
    /// letters that upper-case to ASCII and others that are not ASCII, a control
    /// character, a URL's punctuation; mostly what a number is made of, so that many
    /// are valid.
    fn tricky_text(max: usize) -> impl Strategy<Value = String> {
        let chars = prop_oneof![
            12 => prop::sample::select(vec!['a', 'Z', '0', '9']),
            2 => prop::sample::select(vec!['-', ' ', '\t', '\u{a0}', '\u{3000}']),
            1 => prop::sample::select(vec!['é', 'ﬀ', 'ſ', '\u{1}', '/', ':', '%']),
        ];
        prop::collection::vec(chars, 0..=max).prop_map(String::from_iter)
    }

    #[test]
    fn a_document_url_has_at_most_2048_characters() {
        let at_limit = format!("https://{}", "a".repeat(MAX_URL_BYTES - 8));
        let over = format!("{at_limit}a");
        for (url, ok) in [(at_limit, true), (over, false)] {
            let checked = by_url(DocumentType::Passport, "AB1234567", &url).check();
            assert_eq!(checked.is_ok(), ok, "{} characters", url.len());
            assert_eq!(documented(DocumentType::Passport, "document_url")(&url), ok);
        }
    }

    #[test]
    fn a_licence_number_has_its_letters_and_digits_and_dashes_only_between_them() {
        let licence = |n: &str| by_url(DocumentType::DrivingLicense, n, "https://x.example/d");
        for junk in ["-----", "-D1234", "D1234-", "D--1234", "D-1-2-3"] {
            assert!(licence(junk).check().is_err(), "{junk}");
            assert!(!documented(DocumentType::DrivingLicense, "document_number")(junk));
        }
        for number in ["D-1234-5678", "D1234", "d 12-34 5"] {
            assert!(licence(number).check().is_ok(), "{number}");
        }
    }

    #[test]
    fn a_number_is_read_as_the_letters_written_not_what_they_upper_case_to() {
        let ligature = by_url(DocumentType::Passport, "ab12ﬀ34", "https://x.example/d");
        assert!(ligature.check().is_err(), "ﬀ is not FF");
        let spaced = by_url(
            DocumentType::Passport,
            " ab 12\u{3000}34 ",
            "https://x.example/d",
        );
        assert_eq!(spaced.check().unwrap().document_number, "AB1234");
    }

    proptest! {
        #[test]
        fn each_documented_number_takes_what_check_takes(kind_index in 0_usize..3, number in tricky_text(24)) {
            let kind = DocumentType::ALL[kind_index];
            let checked = by_url(kind, &number, "https://docs.example.com/id.pdf").check();
            prop_assert_eq!(documented(kind, "document_number")(&number), checked.is_ok(), "{:?}", number);
        }

        #[test]
        fn the_documented_url_takes_what_check_takes(rest in tricky_text(12), long in 0_usize..3) {
            // Short, or padded to the limit (2048 characters, when `rest` is all ASCII)
            // and one past it.
            let filler = match long {
                0 => 0,
                extra => (MAX_URL_BYTES - 8).saturating_sub(rest.chars().count()) + extra - 1,
            };
            let url = format!("https://{}{rest}", "a".repeat(filler));
            let checked = by_url(DocumentType::Passport, "AB1234567", &url).check();
            prop_assert_eq!(documented(DocumentType::Passport, "document_url")(&url), checked.is_ok(), "{:?}", url);
        }
    }

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
