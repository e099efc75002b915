-- no-transaction
-- A document is the same however the dashes of its number fall (a driving licence's
-- `D-1234-5678` is `D12345678`): approvals look documents up by the number without
-- them, by index. Built concurrently, outside a transaction, so submissions and
-- decisions go on meanwhile; the index by the number as written stays for the release
-- before.
CREATE INDEX CONCURRENTLY IF NOT EXISTS kyc_submissions_document_key_idx
    ON kyc_submissions (document_type, replace(document_number, '-', ''));
