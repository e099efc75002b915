-- A document is the same however the dashes of its number fall (a driving licence's
-- `D-1234-5678` is `D12345678`): approvals look documents up by the number without
-- them, by index. The index by the number as written stays for the release before.
CREATE INDEX kyc_submissions_document_key_idx
    ON kyc_submissions (document_type, replace(document_number, '-', ''));
